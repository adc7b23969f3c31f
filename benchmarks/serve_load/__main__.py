"""HTTP load benchmark of the service against a bare FastAPI app (the ceiling), driven by wrk.

Starts the service (`python -m app`, one process per `--variant`) and the bare app
(benchmarks/bare_app.py: parses the same bodies, answers a constant) on loopback ports, then:

1. Under load: each scenario runs `--repeat` rounds; a round drives every server in turn (one
   under load at a time, so a slow spell of this shared machine hits them alike) with
   `wrk -t THREADS -c CONNECTIONS` for `--warmup` uncounted seconds and then `--duration`
   counted ones on the same connections. Per scenario and server: medians over rounds of
   req/s (2xx and 3xx replies), images/s, p50/p99 latency, the server's CPU ms per request and
   cores kept busy (utime + stime of its processes from /proc over the counted window), the
   sum of errors (replies >= 400, socket errors, timeouts), and the medians of the per-round
   ratios to the bare app. Every round is listed.
   After each wrk run the benchmark waits until that server is idle: what wrk left in flight
   must not spill into the next run (see wrk.py for how the window is counted).
2. One client: `wrk -t1 -c1` on each one-client scenario: latency without queueing.
3. Mixed soak (service only, Python clients counting every reply): errors, 5xx, and the
   resident memory of the service's processes as the soak goes.

Scenarios are listed in benchmarks/serve_load/scenarios.py. The load generator shares the
machine with the servers, so the bare app's figures are the ceiling of this setup. Run from the
repository root (needs wrk: `sudo apt-get install wrk`):

    python -m benchmarks.serve_load [--duration 10] [--repeat 3] [--scenarios anomaly-1 ...]
        [--env VAE_BATCH_MAX_DELAY_MS=5] [--variant two-workers:VAE_WORKERS=2] [--output x.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from benchmarks.serve_load import report
from benchmarks.serve_load.payloads import load_digits
from benchmarks.serve_load.procfs import cpu_model, load_average
from benchmarks.serve_load.scenarios import MIXED_WEIGHTS, SCENARIOS, Inputs, default_names
from benchmarks.serve_load.servers import Server, running_bare_app, running_service
from benchmarks.serve_load.soak import run_soak
from benchmarks.serve_load.wrk import (
    LoadShape,
    Measurement,
    WrkError,
    find_wrk,
    measure,
    write_requests,
)
from vae_common.checkpoint import sidecar_path

BARE = "bare"


@dataclass(frozen=True)
class Variant:
    """One configuration of the service, started as its own process."""

    name: str
    env: dict[str, str]


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"wanted KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_variant(text: str, common: dict[str, str]) -> Variant:
    name, sep, pairs = text.partition(":")
    if not sep or not name or name == BARE:
        raise argparse.ArgumentTypeError(
            f"--variant wants NAME:KEY=VALUE[,KEY=VALUE...] with a NAME other than {BARE!r}, "
            f"got {text!r}"
        )
    return Variant(name, common | parse_pairs([p for p in pairs.split(",") if p]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_load", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="counted s per wrk run")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="uncounted s at the start of each wrk run"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per scenario")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--timeout", type=int, default=30, help="wrk: s before a timeout error")
    parser.add_argument(
        "--latency-duration", type=float, default=5.0, help="s per one-client run (0: skip)"
    )
    parser.add_argument("--mixed-requests", type=int, default=20000, help="0: skip the soak")
    parser.add_argument("--soak-clients", type=int, default=32)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="service env, all variants"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a service configuration to compare (repeatable; default: one named 'service')",
    )
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=default_names())
    parser.add_argument("--skip-bare", action="store_true", help="do not run the bare app")
    parser.add_argument("--wrk", default="wrk", help="the wrk executable")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        common = parse_pairs(args.env)
        args.variants = [parse_variant(text, common) for text in args.variant] or [
            Variant("service", common)
        ]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if len({variant.name for variant in args.variants}) != len(args.variants):
        parser.error("--variant names must differ")
    if min(args.duration, args.repeat, args.threads, args.connections, args.timeout) < 1:
        parser.error("--duration, --repeat, --threads, --connections, --timeout must be >= 1")
    if min(args.warmup, args.latency_duration, args.mixed_requests) < 0:
        parser.error("--warmup, --latency-duration and --mixed-requests must be >= 0")
    if args.connections < args.threads:
        parser.error("wrk needs at least one connection per thread")
    return args


class Runner:
    """Runs wrk against the servers with the request files written for each scenario."""

    def __init__(self, args: argparse.Namespace, wrk: str, request_dir: Path) -> None:
        self.args = args
        self.wrk = wrk
        digits, self.digits_source = load_digits(args.data_root)
        inputs = Inputs(digits, model_latent_dim(args.model))
        self.pools = {name: SCENARIOS[name].build(inputs) for name in self.scenario_names()}
        self.files: dict[str, list[Path]] = {}
        for name in args.scenarios:
            directory = request_dir / name
            directory.mkdir()
            self.files[name] = write_requests(self.pools[name], directory)

    def scenario_names(self) -> list[str]:
        soak = list(MIXED_WEIGHTS) if self.args.mixed_requests else []
        return list(dict.fromkeys([*self.args.scenarios, *soak]))

    def run(self, server: Server, scenario: str, shape: LoadShape) -> Measurement:
        print(f"  {scenario} -> {server.name}", file=sys.stderr, flush=True)
        images = self.pools[scenario][0].images
        warmup = max(shape.warmup_s, SCENARIOS[scenario].min_warmup_s)
        shape = dataclasses.replace(shape, warmup_s=warmup)
        return measure(self.wrk, server, scenario, images, self.files[scenario], shape)

    def under_load(self, servers: Sequence[Server]) -> list[report.ScenarioRounds]:
        args = self.args
        shape = LoadShape(args.threads, args.connections, args.warmup, args.duration, args.timeout)
        results = []
        for name in self.args.scenarios:
            if not SCENARIOS[name].under_load:
                continue
            rounds = report.ScenarioRounds(name)
            for _ in range(self.args.repeat):
                for server in servers:
                    rounds.add(self.run(server, name, shape))
            results.append(rounds)
        return results

    def one_client(self, services: Sequence[Server]) -> list[Measurement]:
        args = self.args
        shape = LoadShape(1, 1, args.warmup, args.latency_duration, args.timeout)
        return [
            self.run(server, name, shape)
            for name in self.args.scenarios
            if SCENARIOS[name].one_client
            for server in services
        ]


def model_latent_dim(model: Path) -> int:
    """The latent size, from the JSON metadata beside the checkpoint (nothing is loaded)."""
    return int(json.loads(sidecar_path(model).read_text())["architecture"]["latent_dim"])


def header(args: argparse.Namespace, services: Sequence[Server], inputs: str) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    configs = "; ".join(
        f"{variant.name} ({' '.join(f'{k}={v}' for k, v in variant.env.items()) or 'defaults'}"
        f", device {server.ready.get('device', '?')})"
        for variant, server in zip(args.variants, services, strict=True)
    )
    longer = ", ".join(
        f"{name} {SCENARIOS[name].min_warmup_s:g} s"
        for name in args.scenarios
        if SCENARIOS[name].min_warmup_s > args.warmup
    )
    return [
        f"{now}; {cpu_model()}, {os.cpu_count()} cores; load average {load_average()} at start.",
        f"Model {args.model}; services: {configs}; inputs: {inputs}.",
        f"wrk -t{args.threads} -c{args.connections}, {args.repeat} rounds per scenario, "
        "servers alternating within a round; each run counts replies and server CPU over "
        f"{args.duration:g} s after {args.warmup:g} s of warm-up on the same connections "
        f"({'longer warm-up: ' + longer + '; ' if longer else ''}latency and errors: whole "
        "run). Medians over rounds; errors summed; 'vs bare': median of the per-round ratios.",
    ]


def run_all(args: argparse.Namespace, wrk: str) -> list[str]:
    with contextlib.ExitStack() as stack:
        runner = Runner(args, wrk, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        services = []
        for variant in args.variants:
            print(f"starting {variant.name} ...", file=sys.stderr, flush=True)
            services.append(
                stack.enter_context(running_service(args.model, variant.env, variant.name))
            )
        servers = list(services)
        if not args.skip_bare:
            print("starting the bare app ...", file=sys.stderr, flush=True)
            servers.append(stack.enter_context(running_bare_app(BARE)))
        lines = header(args, services, runner.digits_source)
        results = runner.under_load(servers)
        if results:
            bare = None if args.skip_bare else BARE
            lines += ["", *report.load_table(results, bare)]
            lines += ["", "Every round:", "", *report.rounds_lines(results)]
        if args.latency_duration:
            one_client = runner.one_client(services)
            if one_client:
                lines += ["", f"One client (wrk -t1 -c1), {args.latency_duration:g} s each:", ""]
                lines += report.one_client_table(one_client)
        if args.mixed_requests:
            print(f"  mixed soak x{args.mixed_requests} -> {services[0].name}", file=sys.stderr)
            soak = run_soak(
                services[0], runner.pools, MIXED_WEIGHTS, args.mixed_requests, args.soak_clients
            )
            lines += ["", f"Mixed soak on {services[0].name}, {args.soak_clients} clients:", ""]
            lines += report.soak_table(soak)
        return [*lines, "", f"Load average at the end: {load_average()}."]


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    """Treat SIGTERM as Ctrl-C, so the servers are stopped on the way out."""
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt, even when the shell started us with
    # SIGINT ignored; the servers are stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    try:
        lines = run_all(args, find_wrk(args.wrk))
    except WrkError as exc:
        sys.exit(str(exc))
    except KeyboardInterrupt:
        sys.exit("interrupted; the servers were stopped")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
