"""The container files: the compose file validates, the Dockerfile keeps its promises."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from typing import Any, NoReturn

import pytest
import yaml

from app.config import Settings
from tests.conftest import PROJECT_ROOT


def missing_tool(message: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI (CI=true), where the tool must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: install it; a skip here would hide the check)")
    pytest.skip(message)


def require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} is not installed; it {purpose}")
    return path


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever client is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing_tool("no docker compose client on this machine (only the client is needed)")


@cache
def compose_config(profile: str | None) -> dict[str, Any]:
    """`compose config` of docker-compose.yml with no variables set from this shell."""
    args = [*compose_command(), "-f", str(PROJECT_ROOT / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def host_bindings(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, in v1's and v2's rendered forms."""
    bindings = []
    for port in service["ports"]:
        if isinstance(port, dict):
            bindings.append((port.get("host_ip", ""), str(port["published"])))
        else:
            address, published, _ = (
                port.rsplit(":", 2) if port.count(":") == 2 else ("", *port.split(":"))
            )
            bindings.append((address, published))
    return bindings


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_compose_file_validates(profile: str | None) -> None:
    config = compose_config(profile)
    services = config["services"]
    # v1 renders profiled services too; v2 only those of the profiles given.
    assert "vae" in services and "profiles" not in services["vae"]
    assert services.get("vae-gpu", {"profiles": ["gpu"]})["profiles"] == ["gpu"]
    for service in services.values():
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
    if profile == "gpu":
        [device] = services["vae-gpu"]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_gpu_service_keeps_every_setting_of_the_cpu_service() -> None:
    services = compose_config("gpu")["services"]
    cpu, gpu = services["vae"]["environment"], services["vae-gpu"]["environment"]
    assert set(cpu) <= set(gpu), f"missing on vae-gpu: {sorted(set(cpu) - set(gpu))}"
    assert gpu["VAE_DEVICE"] == "cuda"
    assert {key: value for key, value in gpu.items() if key != "VAE_DEVICE"} == {
        key: value for key, value in cpu.items() if key != "VAE_DEVICE"
    }
    settings = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    assert set(gpu) <= settings


def test_compose_ports_are_loopback_and_never_shared_between_profiles() -> None:
    services = compose_config("gpu")["services"]
    bindings = [binding for service in services.values() for binding in host_bindings(service)]
    assert bindings and all(address == "127.0.0.1" for address, _ in bindings)
    ports = [port for _, port in bindings]
    assert len(ports) == len(set(ports)), f"two services publish one host port: {bindings}"


def test_compose_states_the_nvidia_driver_it_needs() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    assert "driver >= 580" in text and "CUDA 13.0" in text


def test_dockerfile_runs_as_non_root_with_a_python_healthcheck() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] != "USER root"
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert not any("curl" in line for line in instructions)
    start = next(i for i, line in enumerate(instructions) if line.startswith("HEALTHCHECK"))
    healthcheck = " ".join(instructions[start : start + 2])
    assert "python" in healthcheck and "/healthz" in healthcheck
    assert "COPY models/ models/" in instructions
    copies = [line for line in instructions if line.startswith("COPY")]
    assert not any("training" in line for line in copies)  # the image never gets training code
