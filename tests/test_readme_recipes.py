"""The README's shell recipes, pasted as a user would after the Quickstart.

Every ```bash block of README.md that calls the service (localhost:8000 or 127.0.0.1:8000)
runs with bash against a live `python -m app` serving the shipped checkpoint, on a free port
written into the commands. The blocks run in README order in one scratch folder that links to
the repository's files (a user's shell sits in the clone), with a PATH without this project's
venv (a fresh shell: nothing activated). `curl` there fails on any HTTP error (as `curl -f`
would), so a recipe that gets a 4xx fails here even when it forgot `-f`.

Blocks that mention the API key (VAE_API_KEY, .vae-api-key) run against a second server that
requires a key; they find it exported as VAE_API_KEY and in .vae-api-key, as
`make serve API_KEY_FILE=.vae-api-key` leaves it.

Every other bash block is excluded with a reason: by a rule in NOT_RUN, or by a line
`<!-- recipe: skip REASON -->` just above the block. Excluded blocks are reported as skipped
with their reason (`pytest -rs`); a block that neither runs nor is excluded fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.serve_load.servers import Server, running_service
from tests.conftest import PROJECT_ROOT, SHIPPED_MODEL
from tests.early_start import early_start

# A draft can be checked before it replaces the README: README_RECIPES=draft.md pytest ...
README = Path(os.environ.get("README_RECIPES", PROJECT_ROOT / "README.md"))
SERVICE_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
SKIP_MARKER = re.compile(r"^<!--\s*recipe:\s*skip\s+(?P<reason>.+?)\s*-->$")
KEYED = re.compile(r"VAE_API_KEY|\.vae-api-key")
KEY_FILE = ".vae-api-key"
TEST_KEY = "readme-recipe-test-key"
BLOCK_TIMEOUT_S = 120
# What a user would read as "this recipe is broken", even when the last command exited 0
# (a pipe's status is its last command's: `missing | head` succeeds).
ERROR_OUTPUT = re.compile(r"command not found|No such file|Traceback|Error|^curl: \(", re.M)

# Blocks that must not run here, whatever else they contain (first match wins).
NOT_RUN: dict[str, str] = {
    r"\bmake\b|\.ci/run": "a make target: installs, serves or tests the whole project",
    r"\bdocker\b|\bdocker-compose\b": "needs a Docker engine",
    r"\bkubectl\b|\bkustomize\b": "needs a Kubernetes cluster",
    r"\bvae-train\b|\btraining\.|--data-root": "trains a model (minutes)",
    r"\bbenchmarks\b": "a benchmark (minutes of load)",
    r"\bvae-serve\b|-m app\b|\buvicorn\b": "starts a server (this test starts its own)",
}

# curl on the recipes' PATH: a call without -f fails on an HTTP error status as if it had
# one; every failing call is logged.
CURL_SHIM = """#!/bin/sh
fails=no
for arg in "$@"; do
    case "$arg" in --fail|--fail-with-body) fails=yes ;; --*) ;; -*f*) fails=yes ;; esac
done
[ "$fails" = yes ] || set -- --fail-with-body "$@"
"{curl}" "$@"
status=$?
[ "$status" -eq 0 ] || echo "curl $* -> exit $status" >> "$CURL_FAILURES"
exit "$status"
"""


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    marker_reason: str | None

    @property
    def exclusion(self) -> str | None:
        if self.marker_reason is not None:
            return f"marked in the README: {self.marker_reason}"
        for pattern, reason in NOT_RUN.items():
            if re.search(pattern, self.text):
                return reason
        return None

    @property
    def calls_the_service(self) -> bool:
        return SERVICE_ADDRESS.search(self.text) is not None

    @property
    def keyed(self) -> bool:
        return KEYED.search(self.text) is not None

    @property
    def label(self) -> str:
        first = next((line for line in self.text.splitlines() if line.strip()), "")
        return f"{README.name}:{self.line} {first[:60]}"


def bash_blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```bash":
            end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
            before = next(
                (lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()), ""
            )
            marker = SKIP_MARKER.match(before)
            text = "\n".join(lines[index + 1 : end])
            blocks.append(Block(index + 1, text, marker["reason"] if marker else None))
            index = end
        index += 1
    return blocks


BLOCKS = bash_blocks(README.read_text())


def test_the_readme_has_recipes_that_call_the_service() -> None:
    assert any(block.calls_the_service and block.exclusion is None for block in BLOCKS)


class Recipes:
    """Live servers, the scratch folder and the environment the blocks run in."""

    def __init__(self, scratch: Path, open_url: str, keyed_url: str) -> None:
        self.scratch = scratch
        self.urls = {False: open_url, True: keyed_url}
        for entry in PROJECT_ROOT.iterdir():
            if entry.name != ".git":
                (scratch / entry.name).symlink_to(entry)
        (scratch / KEY_FILE).unlink(missing_ok=True)  # the clone's own key file, if any
        (scratch / KEY_FILE).write_text(TEST_KEY + "\n")
        shims = scratch.parent / "shims"
        shims.mkdir()
        curl = shims / "curl"
        real_curl = shutil.which("curl")
        assert real_curl is not None, "the README's recipes need curl"
        curl.write_text(CURL_SHIM.replace("{curl}", real_curl))
        curl.chmod(0o755)
        self.failures_log = scratch.parent / "curl-failures.log"
        venv_bin = str(Path(sys.prefix) / "bin")
        path = [entry for entry in os.environ["PATH"].split(os.pathsep) if entry != venv_bin]
        self.environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("VAE_") and key != "VIRTUAL_ENV"
        }
        self.environment.update(
            PATH=os.pathsep.join([str(shims), *path]), CURL_FAILURES=str(self.failures_log)
        )

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        address = self.urls[block.keyed].removeprefix("http://")
        script = SERVICE_ADDRESS.sub(address, block.text)
        environment = dict(self.environment)
        if block.keyed:
            environment["VAE_API_KEY"] = TEST_KEY
        self.failures_log.unlink(missing_ok=True)
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.scratch,
            env=environment,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )


@early_start(scope="module")
def keyed_shipped_service(request: pytest.FixtureRequest) -> AbstractContextManager[Server]:
    """The shipped checkpoint behind an API key, for the recipes that send one."""
    settings = {"VAE_DEVICE": "cpu", "VAE_API_KEY": TEST_KEY}
    return running_service(SHIPPED_MODEL, settings, "keyed", wait=False)


@pytest.fixture(scope="module")
def recipes(
    tmp_path_factory: pytest.TempPathFactory,
    shipped_service: Server,
    keyed_shipped_service: Server,
) -> Recipes:
    """Open recipes go to the suite's shared shipped server (tests/conftest.py), keyed ones
    to a keyed server of their own."""
    scratch = tmp_path_factory.mktemp("readme") / "clone"
    scratch.mkdir()
    return Recipes(scratch, shipped_service.url, keyed_shipped_service.url)


def written_files(text: str) -> list[str]:
    """Files a block asks curl to write (`-o NAME`)."""
    return re.findall(r"(?:^|\s)-o\s+(\S+)", text)


@pytest.mark.slow
@pytest.mark.shipped
@pytest.mark.parametrize("block", BLOCKS, ids=[block.label for block in BLOCKS])
def test_readme_recipe(recipes: Recipes, block: Block) -> None:
    reason = block.exclusion
    if reason is not None:
        pytest.skip(f"{block.label}: not run: {reason}")
    assert block.calls_the_service, (
        "a bash block that neither calls the service nor is excluded: run it here, or add a "
        "rule to NOT_RUN, or put <!-- recipe: skip REASON --> above it"
    )
    result = recipes.run(block)
    failed_calls = recipes.failures_log.read_text() if recipes.failures_log.exists() else ""
    assert result.returncode == 0 and not failed_calls, (
        f"exit {result.returncode}\n{failed_calls}stdout: {result.stdout[-2000:]}\n"
        f"stderr: {result.stderr[-2000:]}"
    )
    assert not ERROR_OUTPUT.search(result.stderr), f"errors printed:\n{result.stderr[-2000:]}"
    outputs = [recipes.scratch / name for name in written_files(block.text)]
    for output in outputs:
        assert output.is_file() and output.stat().st_size > 0, f"{output.name} not written"
        if output.suffix == ".png":
            assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{output.name} is no PNG"
    assert outputs or result.stdout.strip(), "the recipe printed nothing and wrote no file"
