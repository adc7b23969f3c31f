"""vae_client against the real app: a live uvicorn for the blocking client, the ASGI app in
process for the async one. Retries are checked with a recorded sleep, so nothing waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.main import create_app
from scripts.live_server import live_server
from tests.conftest import png_of
from tests.synthetic import stroke_digits
from vae_client import (
    NO_RETRIES,
    AsyncVaeClient,
    RetryPolicy,
    VaeApiError,
    VaeClient,
)
from vae_client.cli import main as cli_main
from vae_client.images import array_to_uint8
from vae_client.retry import retry_after_seconds

API_KEY = "client-test-key"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """(3, 28, 28) uint8 digit-like strokes, white on black."""
    return stroke_digits(3, seed=5)


@pytest.fixture(scope="module")
def service_url(tiny_model_path: Path) -> Iterator[str]:
    with live_server(create_app(Settings(model_path=tiny_model_path, device="cpu"))) as url:
        yield url


class RecordedSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleep() -> RecordedSleep:
    return RecordedSleep()


@pytest.fixture
def vae(service_url: str, sleep: RecordedSleep) -> Iterator[VaeClient]:
    with VaeClient(service_url, sleep=sleep) as client:
        yield client


# --- blocking client against a live server ----------------------------------------------


def test_sample_returns_the_grid_and_the_seed_to_repeat_it(vae: VaeClient) -> None:
    first = vae.sample(4, seed=3, temperature=0.7)
    again = vae.sample(4, seed=3, temperature=0.7)
    assert first.seed == 3
    assert first.png == again.png
    assert first.model_id
    pixels = first.array()
    assert pixels.dtype == np.float32 and pixels.shape == first.image().size[::-1]
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_sample_names_its_prior_and_draws_from_the_one_asked_for(vae: VaeClient) -> None:
    default, fitted = vae.sample(4, seed=3), vae.sample(4, seed=3, prior="fitted")
    standard = vae.sample(4, seed=3, prior="standard")
    assert (default.prior, fitted.prior, standard.prior) == ("fitted", "fitted", "standard")
    assert default.png == fitted.png != standard.png


def test_every_image_form_sends_the_same_picture(
    vae: VaeClient, digits: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(png_of(digits[0]))
    forms: list[object] = [
        path,
        str(path),
        png_of(digits[0]),
        Image.fromarray(digits[0]),
        digits[0],
        digits[0].astype(np.float32) / 255.0,
        digits[0].reshape(784),
    ]
    replies = [vae.reconstruct(form, layout="pair", scale=2) for form in forms]  # type: ignore[arg-type]
    assert {reply.png for reply in replies} == {replies[0].png}
    assert {reply.reconstruction_loss for reply in replies} == {replies[0].reconstruction_loss}
    assert replies[0].image().size == (2 * 28 * 2, 28 * 2)


def test_anomaly_score_matches_the_raw_api_in_input_order(
    vae: VaeClient, service_url: str, digits: np.ndarray
) -> None:
    report = vae.anomaly_score(list(digits), preprocess="none")
    raw = httpx.post(
        f"{service_url}/anomaly-score",
        params={"preprocess": "none"},
        files=[("files", (f"{i}.png", png_of(d), "image/png")) for i, d in enumerate(digits)],
    ).json()
    assert [result.index for result in report.results] == [0, 1, 2]
    assert [result.score for result in report.results] == [r["score"] for r in raw["results"]]
    assert report.model_id == raw["model_id"] and report.threshold == raw["threshold"]
    assert vae.anomaly_score(digits, preprocess="none") == report  # a stacked array works too


def test_model_card_gives_the_latent_size(vae: VaeClient, service_url: str) -> None:
    card = vae.model()
    assert card.model_id == httpx.get(f"{service_url}/readyz").json()["model_id"]
    assert card.latent_dim == card.raw["architecture"]["latent_dim"]


def test_bad_input_raises_the_services_detail_without_retrying(
    vae: VaeClient, sleep: RecordedSleep
) -> None:
    with pytest.raises(VaeApiError) as caught:
        vae.sample(0)
    assert caught.value.status_code == 422
    assert "n" in caught.value.detail
    assert caught.value.request_id
    assert sleep.waits == []


def test_bad_arrays_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        array_to_uint8(np.full((28, 28), 2.0))
    with pytest.raises(ValueError, match="must be"):
        array_to_uint8(np.zeros((2, 3, 5)))


class FailFirst(httpx.BaseTransport):
    """Answers the first `failures` requests itself (a 503 or a connection error), then
    forwards to the real transport."""

    def __init__(self, inner: httpx.BaseTransport, failures: int, error: bool = False) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests <= self.failures:
            if self.error:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503, headers={"Retry-After": "2"}, json={"detail": "busy"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_503_is_retried_after_retry_after_and_then_succeeds(
    service_url: str, sleep: RecordedSleep, digits: np.ndarray
) -> None:
    transport = FailFirst(httpx.HTTPTransport(), failures=1)
    with VaeClient(service_url, transport=transport, sleep=sleep) as client:
        report = client.anomaly_score([digits[0]])
    assert len(report.results) == 1
    assert transport.requests == 2
    assert sleep.waits == [2.0]


def test_connection_errors_are_retried_with_backoff(service_url: str, sleep: RecordedSleep) -> None:
    transport = FailFirst(httpx.HTTPTransport(), failures=2, error=True)
    retry = RetryPolicy(attempts=3, backoff_s=0.1)
    with VaeClient(service_url, transport=transport, retry=retry, sleep=sleep) as client:
        assert client.sample(1, seed=1).seed == 1
    assert transport.requests == 3
    assert len(sleep.waits) == 2
    assert 0.05 <= sleep.waits[0] <= 0.1 and 0.1 <= sleep.waits[1] <= 0.2


def test_a_service_at_capacity_answers_503_and_the_client_gives_up_after_its_attempts(
    make_app: Callable[..., FastAPI], sleep: RecordedSleep, digits: np.ndarray
) -> None:
    # Two images never fit a queue of one: every try gets the service's real 503.
    with (
        live_server(make_app(batch_queue_images=1)) as url,
        VaeClient(url, retry=RetryPolicy(attempts=3), sleep=sleep) as client,
        pytest.raises(VaeApiError) as caught,
    ):
        client.anomaly_score([digits[0], digits[1]])
    assert caught.value.status_code == 503
    assert "retry" in caught.value.detail
    assert sleep.waits == [1.0, 1.0]  # the service's Retry-After, between three tries


def test_an_unreachable_service_raises_the_connection_error(sleep: RecordedSleep) -> None:
    with (
        VaeClient("http://127.0.0.1:9", retry=RetryPolicy(attempts=2), sleep=sleep) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.model()
    assert len(sleep.waits) == 1


def test_no_retries_policy_sends_once(service_url: str, sleep: RecordedSleep) -> None:
    transport = FailFirst(httpx.HTTPTransport(), failures=1)
    with (
        VaeClient(service_url, transport=transport, retry=NO_RETRIES, sleep=sleep) as client,
        pytest.raises(VaeApiError) as caught,
    ):
        client.model()
    assert caught.value.status_code == 503
    assert transport.requests == 1 and sleep.waits == []


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    waited = retry_after_seconds(later)
    assert waited is not None and 28.0 <= waited <= 30.0
    policy = RetryPolicy(max_wait_s=5.0)
    busy = httpx.Response(503, headers={"Retry-After": "120"})
    assert policy.wait_after_response(1, busy) == 5.0  # capped
    assert policy.wait_after_response(policy.attempts, busy) is None  # out of tries


def test_the_api_key_is_sent_as_a_bearer_token(make_app: Callable[..., FastAPI]) -> None:
    with live_server(make_app(api_key=API_KEY)) as url:
        with VaeClient(url, api_key=API_KEY) as client:
            assert client.model().model_id
        with VaeClient(url) as client, pytest.raises(VaeApiError) as caught:
            client.model()
    assert caught.value.status_code == 401


def test_cli_scores_files(
    service_url: str, digits: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for index, digit in enumerate(digits[:2]):
        paths.append(tmp_path / f"digit{index}.png")
        paths[-1].write_bytes(png_of(digit))
    assert cli_main(["--url", service_url, "score", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # header and one line per file
    assert lines[1].startswith(str(paths[0])) and lines[2].startswith(str(paths[1]))
    assert all(line.split()[-1] in {"ok", "ANOMALY"} for line in lines[1:])


def test_cli_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["--url", "http://127.0.0.1:9", "score", str(tmp_path / "none.png")]) == 1
    assert "vae-client:" in capsys.readouterr().err


# --- async client, in process -----------------------------------------------------------


class AsyncFailFirst(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests == 1:
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"detail": "busy"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_async_client_matches_the_blocking_one_and_retries(
    make_app: Callable[..., FastAPI], vae: VaeClient, digits: np.ndarray
) -> None:
    app = make_app()
    sleep = RecordedSleep()

    async def scenario() -> tuple[bytes, list[float], int]:
        transport = AsyncFailFirst(httpx.ASGITransport(app=app))
        async with (
            app.router.lifespan_context(app),
            AsyncVaeClient("http://service", transport=transport, sleep=sleep.wait) as client,
        ):
            samples = await client.sample(4, seed=11)
            report = await client.anomaly_score([digits[0]], preprocess="none")
            return samples.png, [r.score for r in report.results], transport.requests

    png, scores, requests = asyncio.run(scenario())
    assert png == vae.sample(4, seed=11).png
    assert scores == [r.score for r in vae.anomaly_score([digits[0]], preprocess="none").results]
    assert requests == 3 and sleep.waits == [1.0]


# --- the latent API ---------------------------------------------------------------------


def test_encode_gives_mu_and_sigma_per_image_in_order(vae: VaeClient, digits: np.ndarray) -> None:
    encoding = vae.encode(list(digits), preprocess="none")
    assert encoding.mu.shape == (3, encoding.latent_dim) == encoding.sigma.shape
    assert (encoding.sigma > 0).all()
    alone = vae.encode([digits[2]], preprocess="none")
    np.testing.assert_allclose(alone.mu[0], encoding.mu[2], atol=1e-5)


def test_decoding_the_code_gives_the_reconstruction(vae: VaeClient, digits: np.ndarray) -> None:
    encoding = vae.encode([digits[0]], preprocess="none")
    decoded = vae.decode(encoding.mu)
    assert decoded.pixels.shape == (1, 28, 28)
    reconstruction = vae.reconstruct(digits[0], preprocess="none").array()
    # the reconstruction PNG is 8-bit: within one grey level
    np.testing.assert_allclose(decoded.pixels[0], reconstruction, atol=1.5 / 255)
    grid = vae.decode_grid(np.repeat(encoding.mu, 4, axis=0), nrow=2, scale=2)
    assert grid.image().size[0] > 2 * 28


def test_interpolating_images_equals_interpolating_their_codes(
    vae: VaeClient, digits: np.ndarray
) -> None:
    strip = vae.interpolate(digits[0], digits[1], steps=5, preprocess="none")
    codes = vae.encode([digits[0], digits[1]], preprocess="none").mu
    from_codes = vae.interpolate_latents(codes[0], codes[1], steps=5)
    assert strip.image().size == from_codes.image().size
    assert strip.image().size[0] > strip.image().size[1]  # a horizontal strip
    np.testing.assert_allclose(strip.array(), from_codes.array(), atol=2 / 255)
