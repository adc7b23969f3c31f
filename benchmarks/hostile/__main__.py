"""Hostile traffic against `python -m app` on loopback, with normal traffic alongside (wrk).

    python -m benchmarks.hostile [--model models/model.pt] [--requests 5000]

1. soak: the hostile corpus (benchmarks/hostile/corpus.py) in rotation from 4 Python
   clients while wrk sends one-PNG default-score requests; counts 5xx, RSS growth after a
   warm-up, normal-traffic p50/p99.
2. max-cost flood: 8 wrk connections send the most expensive request the default limits
   allow (64 PNGs within VAE_MAX_REQUEST_PIXELS, iwae_nll at k x images =
   VAE_MAX_REQUEST_DECODES) while 1 wrk connection sends one-PNG default-score requests.
3. slow connections: 1,000 sockets trickle a request head, a byte at a time; normal-traffic
   p99 meanwhile, and how long until the server has closed the slow ones.
Run by hand; prints tables. Only loopback.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.hostile.corpus import HostileRequest, corpus, send
from benchmarks.hostile.images import blank_png
from benchmarks.serve_load.payloads import synthetic_digits, upload
from benchmarks.serve_load.procfs import tree_cpu_seconds, tree_rss_kib
from benchmarks.serve_load.servers import LOOPBACK, Server, running_service
from benchmarks.serve_load.wrk import (
    REPLAY_SCRIPT,
    WrkSummary,
    find_wrk,
    parse_summary,
    write_requests,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTILE_CLIENTS = 4
WARMUP_REQUESTS = 300


def start_wrk(
    wrk: str, url: str, files_: Sequence[Path], connections: int, seconds: int
) -> tuple[subprocess.Popen[str], float]:
    start = time.monotonic() + 0.5
    stop = start + seconds
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds + 1}s", "--timeout=30s"]
    argv += [f"-s{REPLAY_SCRIPT}", url, "--", f"{start:.6f}", f"{stop:.6f}", *map(str, files_)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), stop


def finish_wrk(process: subprocess.Popen[str]) -> WrkSummary:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed: {stderr or stdout}")
    return parse_summary(stdout)


def hostile_loop(
    server: Server, requests: Sequence[HostileRequest], count: int, offset: int, out: Counter[str]
) -> None:
    host, port = LOOPBACK, int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection(host, port, timeout=60)
    for index in range(count):
        request = requests[(offset + index) % len(requests)]
        try:
            status, _, _, will_close = send(connection, request)
            out[f"{status // 100}xx"] += 1
            if will_close:
                connection.close()
        except (OSError, http.client.HTTPException) as exc:
            out[f"error {type(exc).__name__}"] += 1
            connection.close()
    connection.close()


def run_hostile(server: Server, requests: Sequence[HostileRequest], total: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    per_client = total // HOSTILE_CLIENTS
    threads = [
        threading.Thread(
            target=hostile_loop, args=(server, requests, per_client, index * 21, counts)
        )
        for index in range(HOSTILE_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def soak(wrk: str, server: Server, normal: list[Path], total: int) -> list[str]:
    requests = corpus()
    run_hostile(server, requests, WARMUP_REQUESTS)
    rss_before = tree_rss_kib(server.pid)
    cpu_before = tree_cpu_seconds(server.pid)
    started = time.monotonic()
    seconds = 600
    process, _ = start_wrk(wrk, server.url, normal, 4, seconds)
    counts = run_hostile(server, requests, total)
    elapsed = time.monotonic() - started
    process.send_signal(signal.SIGINT)  # wrk stops early on SIGINT and still reports
    stdout, _ = process.communicate()
    summary = parse_summary(stdout) if "serve_load-wrk" in stdout else None
    rss_after = tree_rss_kib(server.pid)
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    growth = 100.0 * (rss_after - rss_before) / rss_before
    lines = [
        f"## soak: {sum(counts.values())} hostile requests ({len(requests)} kinds, "
        f"{HOSTILE_CLIENTS} clients) in {elapsed:.1f} s, wrk 4 connections of one-PNG scoring",
        f"hostile replies: {dict(sorted(counts.items()))}",
        f"RSS after {WARMUP_REQUESTS}-request warm-up {rss_before / 1024:.1f} MiB, after soak "
        f"{rss_after / 1024:.1f} MiB: {growth:+.2f}%",
        f"server CPU during soak: {cpu:.1f} s",
    ]
    if summary is not None:
        lines.append(normal_line("normal traffic", summary))
    return lines


def normal_line(label: str, summary: WrkSummary) -> str:
    return (
        f"{label}: {summary.responses} replies, {summary.errors} errors, p50 "
        f"{summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms, max {summary.max_ms:.1f} ms"
    )


def flood(wrk: str, server: Server, normal: list[Path], workdir: Path, seconds: int) -> list[str]:
    # The most expensive request the default limits allow: 64 greyscale PNGs of 790x790
    # (39.9 M pixel values, just under VAE_MAX_REQUEST_PIXELS) scored with iwae_nll at
    # k = 64 (64 x 64 = VAE_MAX_REQUEST_DECODES).
    heavy = upload("/anomaly-score?score=iwae_nll&k=64", "files", [blank_png(790, 790)] * 64)
    heavy_files = write_requests([heavy], workdir / "heavy")
    cpu_before = tree_cpu_seconds(server.pid)
    heavy_process, _ = start_wrk(wrk, server.url, heavy_files, 8, seconds)
    time.sleep(0.5)
    light_process, _ = start_wrk(wrk, server.url, normal, 1, seconds - 1)
    light, heavy_summary = finish_wrk(light_process), finish_wrk(heavy_process)
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    return [
        f"## max-cost flood: 8 connections of 64 x 790x790 PNG, iwae_nll k=64, {seconds} s",
        normal_line("heavy requests", heavy_summary),
        normal_line("one-PNG default score alongside (1 connection)", light),
        f"server CPU: {cpu:.1f} s over {seconds} s",
    ]


def slow_connections(
    wrk: str, server: Server, normal: list[Path], count: int, seconds: int
) -> list[str]:
    port = int(server.url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(count):
        slow = socket.create_connection((LOOPBACK, port))
        slow.sendall(b"POST /anomaly-score HTTP/1.1\r\nHost: x\r\n")
        slow.setblocking(False)
        sockets.append(slow)
    opened = time.monotonic()
    process, _ = start_wrk(wrk, server.url, normal, 4, seconds)
    open_sockets = list(sockets)
    while process.poll() is None:  # trickle: one header byte per socket per second
        open_sockets = [s for s in open_sockets if _trickle(s)]
        time.sleep(1.0)
    summary = parse_summary(process.communicate()[0])
    deadline = opened + 120.0
    while open_sockets and time.monotonic() < deadline:
        open_sockets = [s for s in open_sockets if _trickle(s)]
        time.sleep(1.0)
    waited = time.monotonic() - opened
    for each in sockets:
        each.close()
    closed = count - len(open_sockets)
    return [
        f"## {count} slow connections trickling headers, wrk 4 connections for {seconds} s",
        normal_line("normal traffic", summary),
        f"slow connections closed by the server: {closed}/{count} after {waited:.0f} s"
        + ("" if not open_sockets else " (the rest still open when the benchmark gave up)"),
    ]


def _trickle(connection: socket.socket) -> bool:
    """Send one more header byte; False once the server has closed the connection."""
    try:
        if connection.recv(65536) == b"":
            return False
    except BlockingIOError:
        pass
    except OSError:
        return False
    try:
        connection.send(b"X")
    except OSError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "model.pt")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--flood-seconds", type=int, default=20)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--slow-seconds", type=int, default=15)
    parser.add_argument("--skip", nargs="*", default=[], choices=["soak", "flood", "slow"])
    args = parser.parse_args(argv)
    wrk = find_wrk()
    digit = synthetic_digits(1)[0]
    lines = [f"# benchmarks.hostile {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    with tempfile.TemporaryDirectory() as tmp, running_service(args.model) as server:
        workdir = Path(tmp)
        normal = write_requests([upload("/anomaly-score", "files", [digit])], workdir / "normal")
        if "soak" not in args.skip:
            lines += soak(wrk, server, normal, args.requests)
            print("\n".join(lines), flush=True)
        if "flood" not in args.skip:
            lines += flood(wrk, server, normal, workdir, args.flood_seconds)
            print("\n".join(lines[-4:]), flush=True)
        if "slow" not in args.skip:
            lines += slow_connections(wrk, server, normal, args.slow, args.slow_seconds)
            print("\n".join(lines[-3:]), flush=True)
    print("\n".join(["", *lines]))


if __name__ == "__main__":
    main()
