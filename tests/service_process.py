"""`python -m app` in a child process on a free loopback port, as it runs in production:
for the tests of what only the real server does (signals, read timeouts, workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import PROJECT_ROOT

START_TIMEOUT_S = 90.0  # torch import, model load and warm-up on a busy 2-core machine


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_ready(self) -> None:
        wait_ready(self.url, self.process, self.log)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the service was not ready in {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextmanager
def service_process(
    model_path: Path,
    log_dir: Path,
    environment: Mapping[str, str] | None = None,
    wait: bool = True,
    **settings: str,
) -> Iterator[ServiceProcess]:
    """settings: VAE_* names without the prefix, e.g. drain_seconds="2"; `environment`: other
    variables, e.g. PROMETHEUS_MULTIPROC_DIR. wait=False yields it at once, still starting
    (tests/early_start.py calls `wait_until_ready`)."""
    port = free_port()
    env = {
        **os.environ,
        **(environment or {}),
        "VAE_MODEL_PATH": str(model_path),
        "VAE_DEVICE": "cpu",
        "VAE_PORT": str(port),
        "VAE_HOST": "127.0.0.1",
        "VAE_LOG_LEVEL": "info",
        **{f"VAE_{name.upper()}": value for name, value in settings.items()},
    }
    log = log_dir / f"service-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,  # its own process group: workers are killed with it
        )
    running = ServiceProcess(process, port, log)
    try:
        if wait:
            running.wait_until_ready()
        yield running
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
