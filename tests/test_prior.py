"""The fitted latent prior: EM on synthetic mixtures, the exported `prior_latents` draws,
/sample's `prior` option on the tiny checkpoint (fitted by the real pipeline) and on
checkpoints without a fitted prior, and /reconstruct's one pass against its two."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine import Engine, load_engine
from app.main import create_app
from tests.conftest import png_of
from tests.synthetic import stroke_digits
from training.data import load_mnist
from training.export import export_checkpoint, script_model
from training.model import ModelConfig, build_model
from training.prior import (
    GaussianMixture,
    PriorConfig,
    affordable_components,
    fit_gaussian_mixture,
    kmeans_plus_plus,
    posterior_draws,
)
from vae_common.checkpoint import load_checkpoint
from vae_common.pixels import to_unit_interval

CPU = torch.device("cpu")

# Three well-separated 3-D Gaussians with correlated, unequal covariances.
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [-6.0, 4.0, 3.0]], dtype=torch.float64)
SCALE_TRIL = torch.tensor(
    [
        [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.3]],
        [[0.3, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 0.5]],
        [[0.5, 0.0, 0.0], [-0.4, 0.5, 0.0], [0.1, 0.0, 0.8]],
    ],
    dtype=torch.float64,
)


def synthetic_points(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 3) draws from the mixture above and the component of each."""
    generator = torch.Generator().manual_seed(seed)
    component = torch.multinomial(WEIGHTS, count, replacement=True, generator=generator)
    eps = torch.randn(count, 3, 1, dtype=torch.float64, generator=generator)
    return MEANS[component] + torch.bmm(SCALE_TRIL[component], eps).squeeze(2), component


def matched(fitted: GaussianMixture) -> list[int]:
    """For each true component, the fitted one whose mean is nearest."""
    return torch.cdist(MEANS, fitted.means.to(torch.float64)).argmin(1).tolist()


# --- EM --------------------------------------------------------------------------------------


def test_em_recovers_a_known_three_component_mixture() -> None:
    points, _ = synthetic_points(6000, seed=0)
    fitted, iterations = fit_gaussian_mixture(
        points, 3, torch.Generator().manual_seed(1), PriorConfig(tolerance=1e-6)
    )
    order = matched(fitted)
    assert sorted(order) == [0, 1, 2] and 1 <= iterations <= PriorConfig().max_iterations
    torch.testing.assert_close(fitted.log_weights[order].exp(), WEIGHTS, atol=0.02, rtol=0)
    torch.testing.assert_close(fitted.means[order], MEANS, atol=0.06, rtol=0)
    covariances = fitted.scale_tril @ fitted.scale_tril.transpose(1, 2)
    expected = SCALE_TRIL @ SCALE_TRIL.transpose(1, 2)
    torch.testing.assert_close(covariances[order], expected, atol=0.06, rtol=0)


def test_mixture_log_density_matches_torch_distributions() -> None:
    points, _ = synthetic_points(50, seed=2)
    mixture = GaussianMixture(WEIGHTS.log(), MEANS, SCALE_TRIL)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=WEIGHTS),
        torch.distributions.MultivariateNormal(MEANS, scale_tril=SCALE_TRIL),
    )
    torch.testing.assert_close(mixture.log_likelihood(points), reference.log_prob(points))


def test_the_fit_repeats_with_the_seed_and_moves_with_another() -> None:
    points, _ = synthetic_points(600, seed=3)
    fits = [
        fit_gaussian_mixture(points, 6, torch.Generator().manual_seed(seed), PriorConfig())[0]
        for seed in (4, 4, 5)
    ]
    torch.testing.assert_close(fits[0].means, fits[1].means, rtol=0, atol=0)
    assert not torch.equal(fits[0].means, fits[2].means)


def test_kmeans_plus_plus_spreads_its_centres_over_the_clusters() -> None:
    points, component = synthetic_points(900, seed=6)
    centres = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(0))
    rows = [int((points == centre).all(1).nonzero()[0]) for centre in centres]
    assert sorted(component[rows].tolist()) == [0, 1, 2]


def test_components_are_capped_by_the_points_a_covariance_needs() -> None:
    assert affordable_components((10, 25, 50, 100), 55_000, 32) == [10, 25, 50, 100]
    assert affordable_components((10, 25, 50, 100), 256, 4) == [10, 25]
    assert affordable_components((10, 25), 200, 32) == [1]


# --- the exported method ---------------------------------------------------------------------


def scripted_with_mixture(mixture: GaussianMixture) -> torch.jit.ScriptModule:
    model = build_model(ModelConfig(arch="mlp", latent_dim=3, hidden_dim=8))
    model.prior.set_mixture(
        mixture.log_weights.float(), mixture.means.float(), mixture.scale_tril.float()
    )
    return script_model(model)


def test_exported_prior_latents_draw_from_the_mixture() -> None:
    module = scripted_with_mixture(GaussianMixture(WEIGHTS.log(), MEANS, SCALE_TRIL))
    generator = torch.Generator().manual_seed(0)
    count = 20_000
    eps = torch.randn(count, 3, generator=generator)
    uniform = torch.rand(count, generator=generator)
    latents = module.prior_latents(uniform, eps, 1.0)
    nearest = torch.cdist(latents.double(), MEANS).argmin(1)  # the clusters do not overlap
    frequencies = torch.bincount(nearest, minlength=3).double() / count
    torch.testing.assert_close(frequencies, WEIGHTS, atol=0.015, rtol=0)
    for k in range(3):
        members = latents[nearest == k].double()
        torch.testing.assert_close(members.mean(0), MEANS[k], atol=0.05, rtol=0)
        expected = SCALE_TRIL[k] @ SCALE_TRIL[k].T
        torch.testing.assert_close(torch.cov(members.T), expected, atol=0.05, rtol=0)
    # temperature scales the spread around each mean, not the means or the weights
    component = torch.searchsorted(WEIGHTS.cumsum(0).float(), uniform)  # inverse CDF
    centres = MEANS[component].float()
    cooled = module.prior_latents(uniform, eps, 0.5)
    torch.testing.assert_close(cooled - centres, 0.5 * (latents - centres), atol=1e-5, rtol=0)


def test_unfitted_prior_latents_are_the_standard_draws_times_temperature() -> None:
    module = script_model(build_model(ModelConfig(arch="mlp", latent_dim=3, hidden_dim=8)))
    eps = torch.randn(5, 3)
    torch.testing.assert_close(module.prior_latents(torch.rand(5), eps, 0.7), 0.7 * eps)


def test_exported_prior_log_density_is_the_mixture_density() -> None:
    module = scripted_with_mixture(GaussianMixture(WEIGHTS.log(), MEANS, SCALE_TRIL))
    points, _ = synthetic_points(200, seed=8)
    reference = GaussianMixture(WEIGHTS.log(), MEANS, SCALE_TRIL).log_likelihood(points)
    density = module.prior.log_density(points.float())
    torch.testing.assert_close(density.double(), reference, atol=1e-4, rtol=1e-5)


def test_unfitted_prior_log_density_is_the_standard_normal() -> None:
    module = script_model(build_model(ModelConfig(arch="mlp", latent_dim=3, hidden_dim=8)))
    z = torch.randn(7, 3)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(module.prior.log_density(z), expected)


def test_importance_weights_differ_from_the_standard_ones_by_the_prior_ratio() -> None:
    module = scripted_with_mixture(GaussianMixture(WEIGHTS.log(), MEANS, SCALE_TRIL))
    x = torch.rand(4, 1, 28, 28)
    eps = torch.randn(6, 3)
    standard, fitted = module.importance_weights(x, eps)
    _, expected_standard, _ = module.importance_terms(x, eps)
    torch.testing.assert_close(standard, expected_standard)
    mu, logvar = module.encode(x)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (4, 6, 3)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(2)
    mixture = module.prior.log_density(z.reshape(-1, 3)).view(4, 6)
    torch.testing.assert_close(fitted - standard, mixture - normal, atol=1e-4, rtol=1e-5)


# --- the tiny checkpoint and the service -------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Engine:
    return load_engine(tiny_model_path)


def test_the_pipeline_fits_and_exports_the_prior_it_records(engine: Engine) -> None:
    fit = engine.checkpoint.metadata["prior"]
    assert fit["kind"] == "gaussian_mixture" and fit["chosen_on"] == "validation split"
    draws = PriorConfig().posterior_draws * engine.checkpoint.metadata["dataset"]["train_images"]
    affordable = affordable_components(PriorConfig().components, draws, engine.latent_dim)
    assert set(fit["candidates"]) == {str(k) for k in affordable} and len(affordable) > 1
    assert fit["components"] in affordable
    best = max(fit["candidates"].values(), key=lambda row: row["val_log_likelihood"])
    assert fit["val_log_likelihood"] == best["val_log_likelihood"]
    prior = engine.checkpoint.module.prior
    assert prior.log_weights.shape == (fit["components"],)
    assert prior.means.shape == (fit["components"], engine.latent_dim)
    assert engine.default_prior == "fitted" and set(engine.priors) == {"fitted", "standard"}


def test_the_prior_is_fitted_to_posterior_draws_of_the_training_digits(
    engine: Engine, fake_mnist_root: Path
) -> None:
    # EM's mixture mean, sum_k w_k m_k, is the mean of the points it was fitted to: the
    # seeded posterior draws, not the posterior means.
    train = load_mnist(fake_mnist_root, val_size=64).train
    module = engine.checkpoint.module
    seed = engine.checkpoint.metadata["training"]["seed"]
    draws = PriorConfig().posterior_draws
    points = posterior_draws(module, train, CPU, draws, torch.Generator().manual_seed(seed))
    prior = module.prior
    mixture_mean = torch.softmax(prior.log_weights, 0) @ prior.means
    torch.testing.assert_close(mixture_mean, points.mean(0), atol=1e-4, rtol=0)
    codes, _ = module.encode(to_unit_interval(train))
    assert not torch.allclose(mixture_mean, codes.mean(0), atol=1e-4, rtol=0)
    assert "posterior draws" in engine.checkpoint.metadata["prior"]["fitted_on"]


def test_the_run_records_its_likelihood_under_the_fitted_prior(
    engine: Engine, tiny_run: Path
) -> None:
    metrics = engine.checkpoint.metadata["metrics"]
    card = (tiny_run / "MODEL_CARD.md").read_text()
    assert f"| test IWAE NLL, fitted prior (k = {metrics['iwae_k']}" in card
    fitted_iwae, fitted_elbo = (
        metrics["test_iwae_nll_fitted_prior"],
        metrics["test_neg_elbo_fitted_prior"],
    )
    assert fitted_iwae <= fitted_elbo  # the IWAE bound is the tighter one, as under N(0, I)
    assert fitted_iwae != metrics["test_iwae_nll"]


def test_the_run_draws_both_sample_grids(tiny_run: Path) -> None:
    for name in ("samples.png", "samples_standard.png"):
        with Image.open(tiny_run / name) as grid:
            assert grid.size == (2 * (8 * 30 + 2),) * 2  # 8x8 digits, 2 px padding, x2


@pytest.fixture(scope="module")
def prior_client(tiny_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_model_path, device="cpu"))) as client:
        yield client


def sample(client: TestClient, query: str = "", **body: object) -> tuple[str, np.ndarray]:
    response = client.post(f"/sample{query}", json={"n": 16, "seed": 3, **body})
    assert response.status_code == 200, response.text
    return response.headers["X-Prior"], np.asarray(Image.open(io.BytesIO(response.content)))


def test_sample_draws_from_the_fitted_prior_by_default(prior_client: TestClient) -> None:
    default_prior, default = sample(prior_client)
    fitted_prior, fitted = sample(prior_client, "?prior=fitted")
    standard_prior, standard = sample(prior_client, "?prior=standard")
    assert (default_prior, fitted_prior, standard_prior) == ("fitted", "fitted", "standard")
    assert np.array_equal(default, fitted)
    assert not np.array_equal(fitted, standard)


@pytest.mark.parametrize("prior", ["fitted", "standard"])
def test_seeded_draws_repeat_and_temperature_changes_them(
    prior_client: TestClient, prior: str
) -> None:
    _, first = sample(prior_client, f"?prior={prior}", temperature=0.8)
    _, again = sample(prior_client, f"?prior={prior}", temperature=0.8)
    _, other_seed = sample(prior_client, f"?prior={prior}", temperature=0.8, seed=4)
    _, hotter = sample(prior_client, f"?prior={prior}", temperature=1.5)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed) and not np.array_equal(first, hotter)


def test_sample_rejects_an_unknown_prior(prior_client: TestClient) -> None:
    response = prior_client.post("/sample?prior=flow", json={"n": 1})
    assert response.status_code == 422
    assert "prior" in response.json()["detail"]


def test_model_card_lists_both_priors(prior_client: TestClient) -> None:
    card = prior_client.get("/model").json()
    assert card["prior"]["name"] == "fitted"
    assert set(card["priors"]) == {"fitted", "standard"}
    assert card["prior"]["fit"]["components"] == card["priors"]["fitted"]["fit"]["components"]
    assert "unavailable_priors" not in card


def without_fitted_prior(source: Path, target: Path, as_v1: bool = False) -> Path:
    """`source` re-exported with no `prior` in its metadata: a checkpoint exported without
    fitting one, or (as_v1) one whose module has only model v1's methods."""
    checkpoint = load_checkpoint(source, torch.device("cpu"))
    metadata: dict[str, object] = json.loads(json.dumps(checkpoint.metadata))
    for key in ("format_version", "model_id", "weights_sha256", "prior"):
        del metadata[key]
    module = torch.jit.script(V1Methods(checkpoint.module)) if as_v1 else checkpoint.module
    export_checkpoint(module, metadata, target)
    return target


class V1Methods(torch.nn.Module):
    """A checkpoint's exported methods as model v1 had them: no `prior_latents`, no
    one-pass `reconstruct_with_terms`."""

    def __init__(self, vae: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.vae = vae
        self.latent_dim: int = vae.latent_dim

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)  # type: ignore[no-any-return]

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)  # type: ignore[no-any-return]

    @torch.jit.export
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.reconstruct(x)  # type: ignore[no-any-return]

    @torch.jit.export
    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.score(x)  # type: ignore[no-any-return]

    @torch.jit.export
    def anomaly_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vae.anomaly_terms(x)  # type: ignore[no-any-return]

    @torch.jit.export
    def importance_terms(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vae.importance_terms(x, eps)  # type: ignore[no-any-return]


def test_prior_fitted_is_a_422_naming_the_fix_without_a_fitted_prior(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    path = without_fitted_prior(tiny_model_path, tmp_path / "unfitted.pt")
    with TestClient(create_app(Settings(model_path=path, device="cpu"))) as client:
        refused = client.post("/sample?prior=fitted", json={"n": 4, "seed": 1})
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "exported without fitting" in detail and "prior=standard" in detail
        drawn = client.post("/sample", json={"n": 4, "seed": 1})
        assert drawn.status_code == 200 and drawn.headers["X-Prior"] == "standard"
        card = client.get("/model").json()
        assert card["prior"]["name"] == "standard" and "fitted" in card["unavailable_priors"]


def test_prior_fitted_is_a_422_with_a_checkpoint_that_predates_it(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    path = without_fitted_prior(tiny_model_path, tmp_path / "v1.pt", as_v1=True)
    with TestClient(create_app(Settings(model_path=path, device="cpu"))) as client:
        refused = client.post("/sample?prior=fitted", json={"n": 4, "seed": 1})
        assert refused.status_code == 422
        assert "predates fitted priors" in refused.json()["detail"]
        drawn = client.post("/sample", json={"n": 4, "seed": 1})
        assert drawn.status_code == 200 and drawn.headers["X-Prior"] == "standard"
        reconstructed = client.post(
            "/reconstruct", files={"file": ("d.png", png_of(stroke_digits(1, seed=3)[0]), "")}
        )
        assert reconstructed.status_code == 200  # two passes, as v1 ran it


def test_standard_draws_are_the_seeded_normals_as_before(engine: Engine) -> None:
    # Seeds of the standard prior keep giving the digits they gave before fitted priors.
    latents = torch.randn(6, engine.latent_dim, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        engine.sample(6, 0.6, 9, "standard"), engine.decode(latents * 0.6), rtol=0, atol=0
    )


# --- /reconstruct in one pass ------------------------------------------------------------------


def test_one_pass_reconstruction_equals_the_two_pass_one(engine: Engine) -> None:
    x = to_unit_interval(torch.from_numpy(stroke_digits(5, seed=8)))
    assert engine.reconstructs_in_one_pass
    one_pass = engine.reconstruct(x)
    engine.reconstructs_in_one_pass = False
    try:
        two_passes = engine.reconstruct(x)
    finally:
        engine.reconstructs_in_one_pass = True
    for got, expected in zip(one_pass, two_passes, strict=True):
        torch.testing.assert_close(got, expected)


def test_reconstruct_reply_is_unchanged_by_the_one_pass(
    prior_client: TestClient, engine: Engine
) -> None:
    image = stroke_digits(1, seed=10)[0]
    files = {"file": ("x.png", png_of(image), "image/png")}
    response = prior_client.post("/reconstruct?preprocess=none", files=files)
    assert response.status_code == 200
    x = to_unit_interval(torch.from_numpy(image[None]))
    shown = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float32) / 255.0
    expected_loss, _ = engine.checkpoint.module.score(x)  # the second of the two passes
    expected_image = engine.checkpoint.module.reconstruct(x)[0, 0].numpy()
    assert float(response.headers["X-Reconstruction-Loss"]) == pytest.approx(
        float(expected_loss[0]), abs=1e-4
    )
    np.testing.assert_allclose(shown, expected_image, atol=1.0 / 255)
