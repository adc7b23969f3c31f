"""Cheap traffic under a flood of the most expensive requests (issue 12, "bounded model work").

Starts `python -m app` from `--project` (default: this checkout; pass an unpacked copy of
another commit to compare), then, side by side for `--seconds`:
- `--flood-clients` Python threads each posting `--images` PNGs with `--query` (default the
  most expensive request the limits allow: 64 images, iwae_nll, k=1000) in a loop;
- wrk posting one PNG with the default score at a steady rate (`--rate` per second over 4
  connections), whose p50/p99 the table shows.
A flood reply that is not 200 (e.g. 422 once a k x images limit exists) is counted and shown.

    python -m benchmarks.max_cost_flood [--project DIR] [--seconds 30] [--rate 40]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.rolling_update import DIGITS, finish_wrk, start_wrk, wrk_script
from benchmarks.serve_load.procfs import tree_cpu_seconds

REPO_ROOT = Path(__file__).resolve().parent.parent
WRK_CONNECTIONS = 4


def digits_png(count: int) -> list[bytes]:
    images = np.load(DIGITS)["images"]
    out = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(images[index % len(images)], mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def flood(url: str, files: list[bytes], stop: threading.Event, statuses: Counter[str]) -> None:
    parts = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]
    with httpx.Client(timeout=600) as client:
        while not stop.is_set():
            try:
                statuses[str(client.post(url, files=parts).status_code)] += 1
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO_ROOT)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "model.pt")
    parser.add_argument("--port", type=int, default=18790)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="one-PNG requests per second")
    parser.add_argument("--flood-clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--query", default="score=iwae_nll&k=1000")
    args = parser.parse_args()

    env = {
        **os.environ,
        "VAE_PORT": str(args.port),
        "VAE_MODEL_PATH": str(args.model.resolve()),
        "VAE_DEVICE": "cpu",
        "VAE_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=args.project, env=env)
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the service did not become ready")
            time.sleep(0.2)
        with tempfile.TemporaryDirectory() as work:
            delay_ms = 1000.0 * WRK_CONNECTIONS / args.rate
            script = wrk_script(Path(work), delay_ms)
            quiet = finish_wrk(
                "alone", start_wrk(args.port, script, WRK_CONNECTIONS, args.seconds / 2)
            )
            stop = threading.Event()
            statuses: Counter[str] = Counter()
            url = f"{base}/anomaly-score?{args.query}"
            files = digits_png(args.images)
            threads = [
                threading.Thread(target=flood, args=(url, files, stop, statuses))
                for _ in range(args.flood_clients)
            ]
            cpu_before = tree_cpu_seconds(server.pid)
            for thread in threads:
                thread.start()
            time.sleep(2.0)  # the flood reaches the model first
            loaded = finish_wrk(
                "with flood", start_wrk(args.port, script, WRK_CONNECTIONS, args.seconds)
            )
            stop.set()
            cpu = tree_cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print("the service did not exit within 60 s of SIGTERM: killed")
            server.kill()
    print(f"project {args.project}, flood: {args.flood_clients} x {args.images} PNGs ?{args.query}")
    print(f"flood replies while measured: {dict(statuses)}; server CPU {cpu:.1f} s")
    print("| one-PNG traffic | sent/s | completed | failed (kinds) | p50 ms | p99 ms |")
    print("|---|---:|---:|---|---:|---:|")
    for result in (quiet, loaded):
        print(
            f"| {result.label} | {args.rate:g} | {result.completed} | "
            f"{result.failed} ({result.failure_kinds}) | {result.p50_ms:.1f} | "
            f"{result.p99_ms:.1f} |"
        )


if __name__ == "__main__":
    main()
