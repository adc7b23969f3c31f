"""Fixtures: a fake MNIST on disk, a tiny checkpoint trained on it by the real `vae-train`
pipeline, and apps serving it. Nothing here touches the network or ../shared."""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from benchmarks.serve_load.servers import Server, running_service
from scripts.browser_demo import chromium_path, launch_chromium
from tests.early_start import EarlyStarts, early_start, first_uses
from tests.synthetic import stroke_digits, write_idx_mnist
from training.config import TrainConfig
from training.pipeline import run

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = PROJECT_ROOT / "models" / "model.pt"
MNIST_SAMPLE = Path(__file__).resolve().parent / "data" / "mnist_sample.npz"

# One intra-op thread for the models this process trains and runs: they are far too small to
# gain from a team of two, and on a busy 2-core machine a team spends each op waiting for its
# descheduled partner (a tiny training run: 7.9 s with two threads, 0.42 s with one, at load 3).
# Tests of thread settings that must see the count change or come back start from two
# (two_torch_threads); the servers the suite starts as processes keep their own settings.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fake_mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_mnist(tmp_path_factory.mktemp("data"), train_count=320, test_count=96)


def tiny_config(data_root: Path, out: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "data_root": data_root,
        "arch": "mlp",
        "latent_dim": 4,
        "epochs": 2,
        "batch_size": 64,
        "val_size": 64,
        "iwae_k": 8,
        "seed": 0,
        "device": "cpu",
        "out": out,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_run(fake_mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written by the real training pipeline on the fake MNIST."""
    out = tmp_path_factory.mktemp("tiny-run")
    run(tiny_config(fake_mnist_root, out))
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tiny_run: Path) -> Path:
    return tiny_run / "model.pt"


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    """Two intra-op threads for a test of thread settings that must see a count change or come
    back (the suite otherwise runs on one: see above)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def app_on(model_path: Path, **overrides: Any) -> FastAPI:
    settings = {"model_path": model_path, "device": "cpu", **overrides}
    return create_app(Settings(**settings))


@pytest.fixture
def make_app(tiny_model_path: Path) -> Callable[..., FastAPI]:
    def build(**overrides: Any) -> FastAPI:
        return app_on(overrides.pop("model_path", tiny_model_path), **overrides)

    return build


@pytest.fixture
def client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def module_client(tiny_model_path: Path) -> Iterator[TestClient]:
    """One app for a module whose tests only send requests and read the replies; such a
    module overrides `client` with it. (An app's start loads, verifies and warms up the
    model: 0.12-0.16 s here, for each of about a hundred tests.)"""
    with TestClient(app_on(tiny_model_path)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def shipped_client(shipped_service: Server) -> Iterator[httpx.Client]:
    """A client of the shipped checkpoint's server: requests made as with a TestClient, run
    by the child process (on the core this one leaves idle) instead of in this one."""
    with httpx.Client(base_url=shipped_service.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
def early_starts(request: pytest.FixtureRequest) -> Iterator[EarlyStarts]:
    """The child servers this run's tests use, started in the background (tests/early_start.py)."""
    starts = EarlyStarts()
    starts.begin(first_uses(request.session.items), request)
    try:
        yield starts
    finally:
        starts.close()


@early_start(scope="session")
def shipped_service(request: pytest.FixtureRequest) -> AbstractContextManager[Server]:
    """`python -m app` on the shipped checkpoint, as `make serve` starts it, started once for
    the tests that only send it requests (the README's recipes, the real HTTP path)."""
    return running_service(SHIPPED_MODEL, {"VAE_DEVICE": "cpu"}, name="shipped", wait=False)


@pytest.fixture(scope="session")
def mnist_sample() -> np.ndarray:
    """(300, 28, 28) uint8: MNIST test images 9700-9999, shipped under tests/data."""
    with np.load(MNIST_SAMPLE) as data:
        images: np.ndarray = data["images"]
    return images


@pytest.fixture(scope="session")
def mnist_sample_labels() -> np.ndarray:
    with np.load(MNIST_SAMPLE) as data:
        labels: np.ndarray = data["labels"]
    return labels


def png_of(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def stroke_png() -> bytes:
    """A 28x28 synthetic digit-like PNG, white on black."""
    return png_of(stroke_digits(1, seed=123)[0])


@pytest.fixture(scope="session")
def second_model_path(fake_mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny checkpoint (another seed, so other weights and model ID), for reloads."""
    out = tmp_path_factory.mktemp("tiny-run-seed-1")
    run(tiny_config(fake_mnist_root, out, seed=1))
    return out / "model.pt"


# How long an expectation waits for the page (Playwright's default is 5 s): the machine running
# the suite may be busy, and a passing test never waits this long.
PATIENCE_MS = 20_000


def chromium_or_skip() -> str:
    if importlib.util.find_spec("playwright") is None:
        problem = "the playwright package is not installed (pip install playwright)"
    else:
        executable = chromium_path()
        if executable is not None:
            return executable
        configured = os.environ.get("VAE_CHROMIUM")
        problem = (
            f"VAE_CHROMIUM={configured} does not exist"
            if configured
            else "no Chromium on PATH (apt-get install chromium, or set VAE_CHROMIUM)"
        )
    if os.environ.get("VAE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VAE_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(f"browser tests need Chromium: {problem}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PATIENCE_MS)

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        yield browser
        browser.close()
    expect.set_options(timeout=None)  # back to Playwright's default
