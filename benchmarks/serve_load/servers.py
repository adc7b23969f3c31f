"""Start a server on a free loopback port, wait for GET /readyz, and always stop it.

Shared by the load benchmark and the tests that drive the real `python -m app` over HTTP, so
it imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
LOOPBACK = "127.0.0.1"


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)  # the /readyz reply

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_until_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        if not self.ready:
            self.ready = wait_ready(self, timeout_s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# No proxy: an http_proxy in the environment must not route loopback requests elsewhere.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def readyz(url: str) -> dict[str, Any] | None:
    """The /readyz reply when it is 200, else None (not listening yet, or still loading)."""
    try:
        with _DIRECT.open(f"{url}/readyz", timeout=2.0) as response:
            body: dict[str, Any] = json.load(response)
            return body
    except (OSError, ValueError):  # refused, reset, 503 (HTTPError is an OSError), not JSON
        return None


def wait_ready(server: Server, timeout_s: float) -> dict[str, Any]:
    """Poll /readyz until 200; fail at once, with the log's tail, when the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} before it was ready:\n"
                + log_tail(server.log_path)
            )
        body = readyz(server.url)
        if body is not None:
            return body
        time.sleep(0.2)
    raise TimeoutError(
        f"{server.name} was not ready after {timeout_s:.0f} s:\n" + log_tail(server.log_path)
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn then stops its workers too), SIGKILL when it has not exited in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    port: int,
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    wait: bool = True,
) -> Iterator[Server]:
    """Run `argv` from the repository root, yield it once /readyz answers 200 (at once with
    wait=False: the caller calls `wait_until_ready`), always stop it.

    Output goes to `log_path` (a temporary file when None), never to a pipe: a pipe nobody
    reads fills up and stalls the server."""
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / f"{name}.log"
        log = stack.enter_context(log_path.open("wb"))
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        server = Server(name, process, f"http://{LOOPBACK}:{port}", log_path)
        stack.callback(print_log_tail, server)  # callbacks run last-in first-out: after stop
        stack.callback(stop, process)
        if wait:
            server.wait_until_ready(ready_timeout_s)
        yield server


def service_command(
    model: Path, port: int, overrides: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """`python -m app` on loopback; `overrides` (VAE_* settings) win over the defaults here."""
    env = os.environ | {
        "VAE_HOST": LOOPBACK,
        "VAE_PORT": str(port),
        "VAE_MODEL_PATH": str(model.resolve()),
        "VAE_LOG_LEVEL": "warning",
        # No load balancer routes to these servers, so stopping one needs no drain period
        # (the default, 5 s, was added to every stop: the tests' teardowns and each benchmark).
        "VAE_DRAIN_SECONDS": "0",
    }
    return [sys.executable, "-m", "app"], env | dict(overrides or {})


def bare_app_command(port: int) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:create_app", "--factory"]
    argv += ["--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
    return argv, dict(os.environ)


@contextlib.contextmanager
def running_service(
    model: Path,
    overrides: Mapping[str, str] | None = None,
    name: str = "service",
    log_path: Path | None = None,
    wait: bool = True,
) -> Iterator[Server]:
    port = free_port()
    argv, env = service_command(model, port, overrides)
    with running(name, argv, env, port, log_path, wait=wait) as server:
        yield server


@contextlib.contextmanager
def running_bare_app(
    name: str = "bare", log_path: Path | None = None, wait: bool = True
) -> Iterator[Server]:
    port = free_port()
    argv, env = bare_app_command(port)
    with running(name, argv, env, port, log_path, wait=wait) as server:
        yield server


def print_log_tail(server: Server) -> None:
    tail = log_tail(server.log_path)
    if tail.strip():
        print(f"--- last lines of the {server.name} log ---\n{tail}\n---", file=sys.stderr)
