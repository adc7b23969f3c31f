"""Markdown tables of the measurements: medians over rounds, then every round."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.serve_load.soak import WARMUP_SHARE, SoakResult
from benchmarks.serve_load.wrk import Measurement


@dataclass
class ScenarioRounds:
    """One scenario's measurements per server, in round order; servers in the order run."""

    scenario: str
    runs: dict[str, list[Measurement]] = field(default_factory=dict)

    def add(self, run: Measurement) -> None:
        self.runs.setdefault(run.server, []).append(run)

    def ratios(self, server: str, bare: str, metric: Callable[[Measurement], float]) -> list[float]:
        """`metric` of `server` over the bare app's, round by round (side by side in time)."""
        pairs = zip(self.runs[server], self.runs.get(bare, []), strict=False)
        return [metric(mine) / metric(theirs) for mine, theirs in pairs if metric(theirs) > 0]


def fmt(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def requests_per_s(run: Measurement) -> float:
    return run.requests_per_s


def cpu_ms(run: Measurement) -> float:
    return run.cpu_ms_per_request


LOAD_HEADER = [
    "| scenario | server | req/s | images/s | p50 ms | p99 ms | errors | CPU ms/req "
    "| server cores | req/s vs bare | CPU vs bare |",
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
]


def load_row(rounds: ScenarioRounds, server: str, bare: str | None) -> str:
    runs = rounds.runs[server]
    speed = cpu = ""
    if bare is not None and server != bare and bare in rounds.runs:
        speed = fmt(median(rounds.ratios(server, bare, requests_per_s)), 2)
        cpu = fmt(median(rounds.ratios(server, bare, cpu_ms)), 2)
    cells = [
        rounds.scenario,
        server,
        fmt(median([run.requests_per_s for run in runs])),
        fmt(median([run.images_per_s for run in runs]), 0),
        fmt(median([run.wrk.p50_ms for run in runs])),
        fmt(median([run.wrk.p99_ms for run in runs])),
        str(sum(run.wrk.errors for run in runs)),
        fmt(median([run.cpu_ms_per_request for run in runs]), 2),
        fmt(median([run.server_cores for run in runs]), 2),
        speed,
        cpu,
    ]
    return "| " + " | ".join(cells) + " |"


def load_table(results: Sequence[ScenarioRounds], bare: str | None) -> list[str]:
    lines = list(LOAD_HEADER)
    for rounds in results:
        lines += [load_row(rounds, server, bare) for server in rounds.runs]
    return lines


def rounds_lines(results: Sequence[ScenarioRounds]) -> list[str]:
    """Every round's figures, so the spread behind each median is visible."""
    lines = []
    for rounds in results:
        for server, runs in rounds.runs.items():
            speed = ", ".join(fmt(run.requests_per_s) for run in runs)
            cpu = ", ".join(fmt(run.cpu_ms_per_request, 2) for run in runs)
            p99 = ", ".join(fmt(run.wrk.p99_ms) for run in runs)
            errors = ", ".join(str(run.wrk.errors) for run in runs)
            line = (
                f"- {rounds.scenario} on {server}: req/s {speed}; CPU ms/req {cpu}; "
                f"p99 ms {p99}; errors {errors}"
            )
            if not all(run.warmed_up for run in runs):
                line += " (p50 above the warm-up in a round: CPU per request overstated there)"
            lines.append(line)
    return lines


def one_client_table(runs: Sequence[Measurement]) -> list[str]:
    lines = [
        "| scenario | server | req/s | p50 ms | p90 ms | p99 ms | errors | CPU ms/req |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for run in runs:
        cells = [
            run.scenario,
            run.server,
            fmt(run.requests_per_s),
            fmt(run.wrk.p50_ms, 2),
            fmt(run.wrk.p90_ms, 2),
            fmt(run.wrk.p99_ms, 2),
            str(run.wrk.errors),
            fmt(run.cpu_ms_per_request, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def soak_table(result: SoakResult) -> list[str]:
    lines = [
        "| kind | requests | p50 ms | p99 ms | errors | 5xx |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for stats in result.per_kind:
        cells = [
            stats.kind,
            str(stats.requests),
            fmt(stats.p50_ms),
            fmt(stats.p99_ms),
            str(stats.errors),
            str(stats.server_errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    mib = 1024.0
    lines += [
        "",
        f"{result.requests} requests in {result.seconds:.1f} s. Service RSS (all its "
        f"processes): {result.rss_at_start_kib / mib:.1f} MiB before the soak, "
        f"{result.rss_after_warmup_kib / mib:.1f} MiB after its first {WARMUP_SHARE:.0%}, "
        f"{result.rss_end_kib / mib:.1f} MiB at the end "
        f"({result.rss_growth_percent:+.1f}% since the warm-up).",
    ]
    errors = [
        f"- {stats.kind}: " + ", ".join(f"{k} x{n}" for k, n in stats.error_kinds.most_common())
        for stats in result.per_kind[:-1]
        if stats.error_kinds
    ]
    return lines + (["", "Soak errors:", *errors] if errors else [])
