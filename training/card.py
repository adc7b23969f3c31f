"""The human-readable model card written beside every exported checkpoint."""

from __future__ import annotations

from typing import Any


def render_card(sidecar: dict[str, Any]) -> str:
    metrics, arch = sidecar["metrics"], sidecar["architecture"]
    training, data, env = sidecar["training"], sidecar["dataset"], sidecar["environment"]
    calibration = sidecar["calibration"]
    rows = [
        ("test negative ELBO (nats/image, 1 sample)", metrics["test_neg_elbo"]),
        (
            f"test IWAE NLL (k = {metrics['iwae_k']}, "
            f"{metrics.get('iwae_images', data['test_images'])} test images)",
            metrics["test_iwae_nll"],
        ),
        *_fitted_prior_rows(metrics, data),
        ("test reconstruction / KL", f"{metrics['test_recon']} / {metrics['test_kl']}"),
        ("active latent units", f"{metrics['active_units']} of {arch['latent_dim']}"),
        (
            "best epoch (validation -ELBO)",
            f"{metrics['best_epoch']} ({metrics['best_val_neg_elbo']})",
        ),
        ("orientation head accuracy (validation, 8 classes)", metrics["orientation_val_accuracy"]),
    ]
    default = calibration["default_score"]
    named = calibration["scores"][default]["named"]
    lines = [
        f"# Model card: `{sidecar['model_id']}`",
        "",
        f"A `{arch['arch']}` VAE with a {arch['latent_dim']}-dimensional latent, trained by "
        f"`vae-train` on MNIST ({data['train_images']} training, {data['val_images']} validation, "
        f"{data['test_images']} test images) for {metrics['epochs_trained']} epochs on "
        f"{env['device']} ({env['train_seconds'] / 60:.1f} min of training epochs; "
        f"torch {env['torch']}).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        f"Input: {sidecar['preprocessing']['height']}x{sidecar['preprocessing']['width']} floats "
        f"in [0, 1], {sidecar['preprocessing']['polarity']}.",
        "",
        f"Anomaly score `{default}` on the validation split: "
        + ", ".join(f"{name} {value:.3f}" for name, value in named.items())
        + f"; the default threshold is p{calibration['default_threshold_percentile']:g}.",
        "",
        *_refit_lines(calibration.get("paths", {}).get("refit")),
        *_prior_lines(sidecar.get("prior")),
        "Training: " + ", ".join(f"`{key}={value}`" for key, value in training.items()) + ".",
        "",
        f"Files: `model.pt` sha256 `{sidecar['sha256']}` ({sidecar['size_bytes']} bytes); "
        f"weights sha256 `{sidecar['weights_sha256']}`; dataset fingerprint "
        f"`{data['fingerprint_sha256']}`.",
        "",
    ]
    return "\n".join(lines)


def _fitted_prior_rows(metrics: dict[str, Any], data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The likelihood under the fitted prior, for checkpoints that measured it."""
    if metrics.get("test_iwae_nll_fitted_prior") is None:
        return []
    images = (
        f"k = {metrics['iwae_k']}, {metrics.get('iwae_images', data['test_images'])} test images"
    )
    return [
        (f"test IWAE NLL, fitted prior ({images})", metrics["test_iwae_nll_fitted_prior"]),
        (
            "test negative ELBO, fitted prior (mean log weight of the same draws)",
            metrics["test_neg_elbo_fitted_prior"],
        ),
    ]


def _prior_lines(prior: dict[str, Any] | None) -> list[str]:
    if prior is None:
        return []
    candidates = ", ".join(
        f"K={k}: {row['val_log_likelihood']}" for k, row in prior["candidates"].items()
    )
    return [
        f"Samples (`/sample`, `samples.png`) come from a {prior['components']}-component "
        f"full-covariance Gaussian mixture fitted to the {prior['fitted_on']}, chosen on the "
        f"{prior['chosen_on']} by log-likelihood per latent ({candidates}); "
        "`samples_standard.png` decodes N(0, I) draws instead. The likelihood rows marked "
        "'fitted prior' score the decoder with this mixture as its prior; the others with "
        "N(0, I), the prior it was trained with.",
        "",
    ]


def _refit_lines(refit: dict[str, Any] | None) -> list[str]:
    if refit is None:
        return []
    named = refit["scores"][refit["default_score"]]["named"]
    return [
        f"Pictures that preprocess=mnist refits are scored against the same {refit['split']} "
        f"digits rendered as {', '.join(refit['rendered_as'])} and refitted the same way: "
        + ", ".join(f"{name} {value:.3f}" for name, value in named.items())
        + ".",
        "",
    ]
