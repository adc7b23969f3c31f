"""The container files: the compose file validates, the Dockerfile keeps its promises."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever client is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_compose_file_validates(profile: str | None) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose client on this machine (only the client is needed)")
    args = [*command, "-f", str(PROJECT_ROOT / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "healthz" in result.stdout
    if profile == "gpu":
        assert "driver: nvidia" in result.stdout and "capabilities:" in result.stdout


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
