"""VaeClient and AsyncVaeClient: the same methods, blocking or as coroutines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar

import httpx
import numpy as np

from vae_client import calls
from vae_client.calls import Call, Preprocess, Prior
from vae_client.errors import VaeApiError
from vae_client.images import ImageInput, LatentInput, LatentsInput
from vae_client.results import (
    AnomalyReport,
    DecodedPixels,
    Encoding,
    ModelCard,
    PngImage,
    Reconstruction,
    Samples,
)
from vae_client.retry import RetryPolicy

Result = TypeVar("Result")
Images = Sequence[ImageInput] | np.ndarray
Method = Literal["linear", "slerp"]

DEFAULT_URL = "http://127.0.0.1:8000"
# Connecting should be quick; a large batch may take a while to score on a busy CPU.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _reply(call: Call[Result], response: httpx.Response) -> Result:
    if response.is_error:
        raise VaeApiError.from_response(response)
    return call.parse(response)


class VaeClient:
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _send(self, call: Call[Result]) -> Result:
        attempt = 1
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json, files=call.files
                )
            except httpx.TransportError as error:
                wait = self.retry.wait_after_error(attempt, error)
                if wait is None:
                    raise
            else:
                wait = self.retry.wait_after_response(attempt, response)
                if wait is None:
                    return _reply(call, response)
            self._sleep(wait)
            attempt += 1

    def sample(
        self,
        n: int = 64,
        *,
        nrow: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        prior: Prior | None = None,
    ) -> Samples:
        return self._send(calls.sample(n, nrow, seed, temperature, prior))

    def reconstruct(
        self,
        image: ImageInput,
        *,
        preprocess: Preprocess = "mnist",
        scale: int = 1,
        layout: Literal["single", "pair"] = "single",
    ) -> Reconstruction:
        return self._send(calls.reconstruct(image, preprocess, scale, layout))

    def anomaly_score(
        self,
        images: Images,
        *,
        preprocess: Preprocess = "mnist",
        score: str | None = None,
        k: int | None = None,
        threshold: float | None = None,
        fpr: float | None = None,
    ) -> AnomalyReport:
        return self._send(calls.anomaly_score(images, preprocess, score, k, threshold, fpr))

    def encode(self, images: Images, *, preprocess: Preprocess = "mnist") -> Encoding:
        return self._send(calls.encode(images, preprocess))

    def decode(self, latents: LatentsInput | LatentInput) -> DecodedPixels:
        return self._send(calls.decode(latents))

    def decode_grid(
        self, latents: LatentsInput | LatentInput, *, nrow: int | None = None, scale: int = 1
    ) -> PngImage:
        return self._send(calls.decode_grid(latents, nrow, scale))

    def interpolate(
        self,
        start: ImageInput,
        end: ImageInput,
        *,
        steps: int = 10,
        method: Method = "linear",
        scale: int = 1,
        preprocess: Preprocess = "mnist",
    ) -> PngImage:
        return self._send(calls.interpolate(start, end, steps, method, scale, preprocess))

    def interpolate_latents(
        self,
        start: LatentInput,
        end: LatentInput,
        *,
        steps: int = 10,
        method: Method = "linear",
        scale: int = 1,
    ) -> PngImage:
        return self._send(calls.interpolate_latents(start, end, steps, method, scale))

    def model(self) -> ModelCard:
        return self._send(calls.model())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncVaeClient:
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _send(self, call: Call[Result]) -> Result:
        attempt = 1
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json, files=call.files
                )
            except httpx.TransportError as error:
                wait = self.retry.wait_after_error(attempt, error)
                if wait is None:
                    raise
            else:
                wait = self.retry.wait_after_response(attempt, response)
                if wait is None:
                    return _reply(call, response)
            await self._sleep(wait)
            attempt += 1

    async def sample(
        self,
        n: int = 64,
        *,
        nrow: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        prior: Prior | None = None,
    ) -> Samples:
        return await self._send(calls.sample(n, nrow, seed, temperature, prior))

    async def reconstruct(
        self,
        image: ImageInput,
        *,
        preprocess: Preprocess = "mnist",
        scale: int = 1,
        layout: Literal["single", "pair"] = "single",
    ) -> Reconstruction:
        return await self._send(calls.reconstruct(image, preprocess, scale, layout))

    async def anomaly_score(
        self,
        images: Images,
        *,
        preprocess: Preprocess = "mnist",
        score: str | None = None,
        k: int | None = None,
        threshold: float | None = None,
        fpr: float | None = None,
    ) -> AnomalyReport:
        return await self._send(calls.anomaly_score(images, preprocess, score, k, threshold, fpr))

    async def encode(self, images: Images, *, preprocess: Preprocess = "mnist") -> Encoding:
        return await self._send(calls.encode(images, preprocess))

    async def decode(self, latents: LatentsInput | LatentInput) -> DecodedPixels:
        return await self._send(calls.decode(latents))

    async def decode_grid(
        self, latents: LatentsInput | LatentInput, *, nrow: int | None = None, scale: int = 1
    ) -> PngImage:
        return await self._send(calls.decode_grid(latents, nrow, scale))

    async def interpolate(
        self,
        start: ImageInput,
        end: ImageInput,
        *,
        steps: int = 10,
        method: Method = "linear",
        scale: int = 1,
        preprocess: Preprocess = "mnist",
    ) -> PngImage:
        return await self._send(calls.interpolate(start, end, steps, method, scale, preprocess))

    async def interpolate_latents(
        self,
        start: LatentInput,
        end: LatentInput,
        *,
        steps: int = 10,
        method: Method = "linear",
        scale: int = 1,
    ) -> PngImage:
        return await self._send(calls.interpolate_latents(start, end, steps, method, scale))

    async def model(self) -> ModelCard:
        return await self._send(calls.model())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
