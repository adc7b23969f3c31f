"""`make serve` says whether the API key is on and where it came from, never the key itself;
with API_KEY_FILE it makes the key file once (mode 600) and serves with that key. Run against
a stand-in venv whose `python -m app` only reports the key it was given."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

STAND_IN = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "app" ]; then echo "app got key: ${VAE_API_KEY:-none}"; exit 0; fi
exec {python} "$@"
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_serve(venv: Path, *arguments: str, **environment: str) -> list[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    clean.pop("API_KEY_FILE", None)
    result = subprocess.run(
        # -o: the stand-in venv counts as installed, nothing is installed
        [
            "make",
            "--no-print-directory",
            "-o",
            f"{venv}/.serve",
            "serve",
            f"VENV={venv}",
            *arguments,
        ],
        cwd=PROJECT_ROOT,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN.replace("{python}", sys.executable))
    python.chmod(0o755)
    return python.parent.parent


def test_without_a_key_it_says_the_api_is_open(venv: Path) -> None:
    lines = make_serve(venv)
    assert lines[0].startswith("API key: off")
    assert lines[-1] == "app got key: none"


def test_an_exported_key_is_used_and_not_printed(venv: Path) -> None:
    lines = make_serve(venv, VAE_API_KEY="exported-secret")
    assert lines[0].startswith("API key: required (VAE_API_KEY from this shell")
    assert lines[-1] == "app got key: exported-secret"
    assert not any("exported-secret" in line for line in lines[:-1])


def test_a_key_file_is_made_once_private_and_served(venv: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    first = make_serve(venv, f"API_KEY_FILE={key_file}")
    key = key_file.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first[0] == f"API key: generated into {key_file} (readable by you only)"
    assert first[1].startswith(f"API key: required; it is in {key_file}")
    assert first[-1] == f"app got key: {key}"
    assert not any(key in line for line in first[:-1])
    again = make_serve(venv, f"API_KEY_FILE={key_file}")
    assert not any("generated" in line for line in again)
    assert again[-1] == f"app got key: {key}"
