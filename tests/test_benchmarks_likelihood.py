"""benchmarks/likelihood.py re-derives a checkpoint's test figures from the exported module:
on the suite's tiny run it must give the figures vae-train recorded in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.likelihood import measure
from training.data import read_mnist_images
from training.pipeline import iwae_subset


def test_the_exported_module_gives_the_test_figures_the_training_run_recorded(
    tiny_run: Path, fake_mnist_root: Path
) -> None:
    metadata = json.loads((tiny_run / "model.json").read_text())
    metrics, training = metadata["metrics"], metadata["training"]
    test = read_mnist_images(fake_mnist_root, train=False, download=False)
    iwae_images = iwae_subset(test, training["iwae_images"], training["seed"])
    assert len(iwae_images) == metrics["iwae_images"]

    row = measure(tiny_run / "model.pt", test, iwae_images, metrics["iwae_k"], training["seed"])

    assert row.model_id == metadata["model_id"]
    # The run rounds to 3 decimals; the scripted module may differ from the eager one in the
    # last float32 bits.
    assert row.neg_elbo == pytest.approx(metrics["test_neg_elbo"], abs=2e-3)
    assert row.iwae_nll == pytest.approx(metrics["test_iwae_nll"], abs=2e-3)
    assert row.iwae_nll < row.neg_elbo  # the IWAE bound is the tighter one
    assert row.fitted_iwae_nll == pytest.approx(metrics["test_iwae_nll_fitted_prior"], abs=2e-3)
    assert row.fitted_neg_elbo == pytest.approx(metrics["test_neg_elbo_fitted_prior"], abs=2e-3)
