from __future__ import annotations

import io
import json
import logging
import math
import socket
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from training import progress
from training.cli import main, parse_args
from training.config import (
    FULL_IWAE_K,
    MIN_LIMITED_IWAE_K,
    TrainingSetupError,
)
from training.data import iterate_batches, load_mnist
from training.export import export_checkpoint
from training.model import ModelConfig, bernoulli_nll, build_model, gaussian_kl
from training.pipeline import run
from training.state import STATE_FILE
from training.train import kl_weight, train_one_epoch
from vae_common.checkpoint import load_checkpoint, weights_sha256

RUN_FILES = (
    "model.pt",
    "model.json",
    "metrics.jsonl",
    "loss_curve.png",
    "reconstructions.png",
    "samples.png",
)


def test_smoke_run_writes_every_artifact(tiny_run: Path) -> None:
    for name in RUN_FILES:
        assert (tiny_run / name).stat().st_size > 0, name
    epochs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert set(epochs[0]["val"]) == {"loss", "recon", "kl"}


def test_exported_checkpoint_reloads_and_every_method_runs(tiny_model_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_model_path, torch.device("cpu"))
    module, latent = checkpoint.module, checkpoint.latent_dim
    x = torch.rand(3, 1, 28, 28)

    mu, logvar = module.encode(x)
    assert mu.shape == logvar.shape == (3, latent)
    decoded = module.decode(torch.zeros(5, latent))
    assert decoded.shape == (5, 1, 28, 28)
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    assert module.reconstruct(x).shape == (3, 1, 28, 28)
    recon, kl = module.score(x)
    assert recon.shape == kl.shape == (3,)
    assert bool((recon > 0).all()) and bool((kl >= 0).all())
    recon_k, log_weights, kl_again = module.importance_terms(x, torch.randn(7, latent))
    assert recon_k.shape == log_weights.shape == (3, 7)
    torch.testing.assert_close(kl_again, kl)


def test_embedded_metadata_round_trips_with_the_sidecar(tiny_model_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_model_path, torch.device("cpu"))
    sidecar = json.loads(tiny_model_path.with_name("model.json").read_text())
    assert sidecar.pop("sha256") == checkpoint.file_sha256
    assert sidecar.pop("size_bytes") == tiny_model_path.stat().st_size
    assert sidecar == checkpoint.metadata
    assert checkpoint.metadata["weights_sha256"] == weights_sha256(checkpoint.module)
    assert checkpoint.metadata["architecture"]["latent_dim"] == 4
    assert checkpoint.metadata["preprocessing"]["value_range"] == [0.0, 1.0]
    for key in ("test_neg_elbo", "test_iwae_nll", "active_units", "best_epoch"):
        assert key in checkpoint.metadata["metrics"]
    named = checkpoint.metadata["calibration"]["scores"]["neg_elbo"]["named"]
    assert list(named) == ["p50", "p90", "p95", "p99", "p99.9"]
    assert checkpoint.metadata["dataset"]["train_images"] == 320 - 64


def test_iwae_bound_is_not_looser_than_the_elbo(tiny_model_path: Path) -> None:
    metrics = load_checkpoint(tiny_model_path, torch.device("cpu")).metadata["metrics"]
    # Both are per-image estimates on 96 images; the IWAE bound is tighter in expectation.
    assert metrics["test_iwae_nll"] <= metrics["test_neg_elbo"] + 1.0


def test_loss_terms_match_a_hand_computation() -> None:
    probabilities = [0.9, 0.2, 0.5, 0.7]
    targets = [1.0, 0.0, 0.25, 0.5]
    logits = torch.logit(torch.tensor(probabilities)).view(1, 1, 2, 2)
    x = torch.tensor(targets).view(1, 1, 2, 2)
    by_hand = -sum(
        t * math.log(p) + (1 - t) * math.log(1 - p)
        for p, t in zip(probabilities, targets, strict=True)
    )
    assert float(bernoulli_nll(logits, x)[0]) == pytest.approx(by_hand, rel=1e-5)

    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(0.25)]])
    kl_by_hand = 0.5 * ((0.25 + 1 - 1 - 0) + (1.0 + 0.25 - 1 - math.log(0.25)))
    assert float(gaussian_kl(mu, logvar)[0]) == pytest.approx(kl_by_hand, rel=1e-6)


def test_kl_warmup_ramps_linearly_to_beta() -> None:
    assert kl_weight(0, 100, 1.0) == 0.0
    assert kl_weight(50, 100, 2.0) == 1.0
    assert kl_weight(500, 100, 1.0) == 1.0
    assert kl_weight(0, 0, 0.5) == 0.5


def test_same_seed_gives_identical_weights(
    tiny_run: Path, fake_mnist_root: Path, tmp_path: Path
) -> None:
    # The suite's tiny run is the first of the two: the same config, seed 0.
    first = json.loads((tiny_run / "model.json").read_text())
    second = run(tiny_config(fake_mnist_root, tmp_path / "b"))
    other_seed = run(tiny_config(fake_mnist_root, tmp_path / "c", epochs=1, iwae_k=2, seed=1))
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["weights_sha256"] != other_seed["weights_sha256"]


def test_resume_continues_to_the_same_weights(fake_mnist_root: Path, tmp_path: Path) -> None:
    # A constant learning rate, so that stopping after epoch 1 and extending to 2 is the same
    # schedule as running 2 epochs straight.
    common = {"iwae_k": 2, "lr_schedule": "constant"}
    straight = run(tiny_config(fake_mnist_root, tmp_path / "straight", epochs=2, **common))
    run(tiny_config(fake_mnist_root, tmp_path / "resumed", epochs=1, **common))
    resumed = run(
        tiny_config(fake_mnist_root, tmp_path / "resumed", epochs=2, resume=True, **common)
    )
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_state_loads_with_weights_only(tiny_run: Path) -> None:
    # Resuming must never unpickle arbitrary objects: the state is tensors and plain values.
    state = torch.load(tiny_run / STATE_FILE, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "history", "best_state"} <= set(state)
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert isinstance(state["step"], int) and state["step"] > 0


def test_resume_refuses_a_state_holding_python_objects(
    fake_mnist_root: Path, tmp_path: Path
) -> None:
    # What an older vae-train could write: a pickled class instance among plain values.
    torch.save(
        {"history": [ModelConfig(arch="mlp", latent_dim=4)], "step": 4}, tmp_path / STATE_FILE
    )
    with pytest.raises(TrainingSetupError, match=r"cannot resume from .*without --resume"):
        run(tiny_config(fake_mnist_root, tmp_path, epochs=2, iwae_k=2, resume=True))


def test_resume_without_a_saved_state_exits_2_naming_the_file(
    fake_mnist_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["--data-root", str(fake_mnist_root), "--out", str(tmp_path), "--resume"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--arch", "mlp", "--val-size", "64"])
    assert exit_info.value.code == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [f"--resume given but {tmp_path / STATE_FILE} does not exist; drop --resume"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
        (["--epochs", "two"], "argument --epochs: expected an integer >= 1, got 'two'"),
        (["--lr", "-0.1"], "argument --lr: must be > 0, got -0.1"),
        (["--limit", "0"], "argument --limit: must be >= 1, got 0"),
        (["--iwae-k", "0"], "argument --iwae-k: must be >= 1, got 0"),
        (["--beta", "-1"], "argument --beta: must be >= 0, got -1"),
        (["--arch", "resnet"], "argument --arch: invalid choice: 'resnet'"),
    ],
)
def test_bad_flag_exits_2_with_one_line_naming_flag_and_value(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"vae-train: error: {named}")


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("(default: 30)", "(default: 128)", "(default: conv)", "default: 1000"):
        assert shown in text


def test_iwae_k_scales_down_under_limit_unless_given() -> None:
    assert parse_args([]).iwae_k == FULL_IWAE_K
    assert parse_args(["--limit", "2000"]).iwae_k == 33  # 1000 * 2000 / 60000
    assert parse_args(["--limit", "30"]).iwae_k == MIN_LIMITED_IWAE_K
    assert parse_args(["--limit", "100000"]).iwae_k == FULL_IWAE_K
    assert parse_args(["--limit", "2000", "--iwae-k", "1000"]).iwae_k == 1000
    assert parse_args(["--iwae-k", "7"]).iwae_k == 7


def test_last_lines_name_the_run_folder_and_explain_a_short_run(
    fake_mnist_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vae-train")
    run(tiny_config(fake_mnist_root, tmp_path, epochs=1, iwae_k=2))
    last = [record.getMessage() for record in caplog.records][-3:]
    assert last[0].startswith(f"run folder {tmp_path.resolve()}: ")
    for name in RUN_FILES:
        assert name in last[0]
    assert f"VAE_MODEL_PATH={tmp_path.resolve() / 'model.pt'}" in last[1]
    assert "grey squares because the model is barely trained" in last[2]


def test_export_does_not_warn_about_the_deliberate_torchscript_format(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(tiny_model_path, torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_checkpoint(checkpoint.module, dict(checkpoint.metadata), tmp_path / "model.pt")
    assert [str(warning.message) for warning in caught] == []


def test_missing_data_offline_exits_nonzero_with_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(*_: object, **__: object) -> None:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    empty = tmp_path / "nothing-here"
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-root", str(empty), "--out", str(tmp_path / "out"), "--epochs", "1"])
    assert exit_info.value.code == 2
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert str(empty.resolve() / "MNIST" / "raw") in message
    assert "--data-root" in message
    assert "Traceback" not in message


def test_batches_cover_the_split_once_in_the_pixel_convention(fake_mnist_root: Path) -> None:
    splits = load_mnist(fake_mnist_root, val_size=64)
    generator = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(splits.train, 100, torch.device("cpu"), generator))
    assert [len(batch) for batch in batches] == [100, 100, 56]
    stacked = torch.cat(batches)
    assert stacked.dtype == torch.float32 and stacked.shape[1:] == (1, 28, 28)
    assert float(stacked.min()) >= 0.0 and float(stacked.max()) <= 1.0
    # Same multiset of images, shuffled: compare sorted per-image sums.
    expected = (splits.train.float() / 255).sum((1, 2)).sort().values
    torch.testing.assert_close(stacked.sum((1, 2, 3)).sort().values, expected)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_both_architectures_script_and_keep_the_contract(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, latent_dim=3)).eval()  # type: ignore[arg-type]
    scripted = torch.jit.script(model)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(scripted.reconstruct(x), model.reconstruct(x))


def test_channels_last_trains_the_same_model_and_exports_it_in_the_default_order(
    fake_mnist_root: Path, tmp_path: Path
) -> None:
    common = {"arch": "conv", "epochs": 1, "iwae_k": 2}
    nchw = run(tiny_config(fake_mnist_root, tmp_path / "nchw", **common))
    nhwc = run(tiny_config(fake_mnist_root, tmp_path / "nhwc", channels_last=True, **common))
    assert nhwc["training"]["channels_last"] is True
    # The same arithmetic in another memory order: equal losses up to rounding.
    for name in ("test_neg_elbo", "test_recon", "test_kl"):
        assert nhwc["metrics"][name] == pytest.approx(nchw["metrics"][name], rel=1e-3)
    exported = torch.jit.load(tmp_path / "nhwc" / "model.pt")
    convolutions = [t for t in exported.state_dict().values() if t.dim() == 4]
    assert convolutions and all(t.is_contiguous() for t in convolutions)


class _RecordingVAE(torch.nn.Module):
    """Records what the encoder is given and decodes to logits of the clean batch it was
    told about, so that the reconstruction loss shows which target it was scored against."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.encoded: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.encoded.append(x.detach().clone())
        mu = torch.zeros(len(x), 2) * self.scale
        return torch.logit(self.clean.clamp(1e-3, 1 - 1e-3)) * self.scale, mu, mu

    clean: torch.Tensor


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_encoder_noise_perturbs_only_the_encoders_input(noise: float) -> None:
    torch.manual_seed(0)
    clean = torch.rand(64, 1, 28, 28)
    model = _RecordingVAE()
    model.clean = clean
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    terms, _ = train_one_epoch(
        model,  # type: ignore[arg-type]
        [clean],
        optimizer,
        scheduler,
        first_step=0,
        warmup_steps=0,
        beta=1.0,
        encoder_noise=noise,
    )
    difference = model.encoded[0] - clean
    assert float(difference.std()) == pytest.approx(noise, abs=0.01)
    # The loss is scored against the clean batch: logits of the clean pixels reproduce it.
    with torch.no_grad():
        expected = float(bernoulli_nll(model(clean)[0], clean).mean())
    assert terms.recon == pytest.approx(expected)


def test_encoder_noise_flag_reaches_the_recorded_config() -> None:
    assert parse_args(["--encoder-noise", "0.1"]).encoder_noise == 0.1
    assert parse_args([]).encoder_noise == 0.0


def test_weight_decay_changes_the_weights_and_is_recorded(
    tiny_run: Path, fake_mnist_root: Path, tmp_path: Path
) -> None:
    assert parse_args(["--weight-decay", "0.05"]).weight_decay == 0.05
    plain = json.loads((tiny_run / "model.json").read_text())  # the same config without it
    decayed = run(tiny_config(fake_mnist_root, tmp_path / "wd", weight_decay=0.5))
    assert decayed["training"]["weight_decay"] == 0.5
    assert decayed["weights_sha256"] != plain["weights_sha256"]


def test_cuda_without_a_gpu_stops_training_with_a_clear_message(
    fake_mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingSetupError, match="--device=cuda but no CUDA GPU"):
        run(tiny_config(fake_mnist_root, tmp_path, device="cuda"))


def test_progress_logs_counts_and_time_left_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vae-train")
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # a log file, not a tty
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    assert list(progress.track(iter("abcd"), 4, "demo")) == ["a", "b", "c", "d"]
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["demo: 1/4", "demo: 2/4", "demo: 3/4"]
    assert all(line.endswith(" s left") for line in lines)


def test_heartbeat_says_when_a_step_starts_and_how_long_it_took(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vae-train")
    with progress.heartbeat("calibrating"):
        pass
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "calibrating ..."
    assert lines[-1].startswith("calibrating: done in ")
