"""One `Call` per operation: what to send and how to read the reply. The sync and async
clients only differ in how they send it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx
import numpy as np

from vae_client.images import (
    ImageInput,
    LatentInput,
    LatentsInput,
    Upload,
    as_upload,
    latent_rows,
    latent_vector,
)
from vae_client.results import (
    AnomalyReport,
    DecodedPixels,
    Encoding,
    ModelCard,
    PngImage,
    Reconstruction,
    Samples,
)

Result = TypeVar("Result")
Preprocess = Literal["mnist", "none"]
Prior = Literal["fitted", "standard"]  # None: the model's default (fitted when it has one)
QueryValue = str | int | float


@dataclass(frozen=True)
class Call(Generic[Result]):
    method: str
    path: str
    parse: Callable[[httpx.Response], Result]
    params: dict[str, QueryValue] | None = None
    json: Any = None
    files: list[tuple[str, Upload]] | None = None


def _query(**options: QueryValue | None) -> dict[str, QueryValue]:
    return {name: value for name, value in options.items() if value is not None}


def _model_id(response: httpx.Response) -> str:
    return str(response.headers.get("X-Model-Id", ""))


def _png(response: httpx.Response) -> PngImage:
    return PngImage(png=response.content, model_id=_model_id(response))


def sample(
    n: int, nrow: int | None, seed: int | None, temperature: float, prior: Prior | None
) -> Call[Samples]:
    def parse(response: httpx.Response) -> Samples:
        return Samples(
            png=response.content,
            model_id=_model_id(response),
            seed=int(response.headers["X-Seed"]),
            # services older than fitted priors send no X-Prior: they draw from N(0, I)
            prior=response.headers.get("X-Prior", "standard"),
        )

    body = {"n": n, "nrow": nrow, "seed": seed, "temperature": temperature}
    return Call(
        "POST",
        "/sample",
        parse,
        params=_query(prior=prior),
        json={k: v for k, v in body.items() if v is not None},
    )


def reconstruct(
    image: ImageInput, preprocess: Preprocess, scale: int, layout: Literal["single", "pair"]
) -> Call[Reconstruction]:
    def parse(response: httpx.Response) -> Reconstruction:
        return Reconstruction(
            png=response.content,
            model_id=_model_id(response),
            reconstruction_loss=float(response.headers["X-Reconstruction-Loss"]),
        )

    return Call(
        "POST",
        "/reconstruct",
        parse,
        params=_query(preprocess=preprocess, scale=scale, layout=layout),
        files=[("file", as_upload(image, "file"))],
    )


def anomaly_score(
    images: Sequence[ImageInput] | np.ndarray,
    preprocess: Preprocess,
    score: str | None,
    k: int | None,
    threshold: float | None,
    fpr: float | None,
) -> Call[AnomalyReport]:
    return Call(
        "POST",
        "/anomaly-score",
        lambda response: AnomalyReport.from_json(response.json()),
        params=_query(preprocess=preprocess, score=score, k=k, threshold=threshold, fpr=fpr),
        files=_image_parts(images),
    )


def encode(images: Sequence[ImageInput] | np.ndarray, preprocess: Preprocess) -> Call[Encoding]:
    return Call(
        "POST",
        "/encode",
        lambda response: Encoding.from_json(response.json()),
        params=_query(preprocess=preprocess),
        files=_image_parts(images),
    )


def decode(latents: LatentsInput | LatentInput) -> Call[DecodedPixels]:
    def parse(response: httpx.Response) -> DecodedPixels:
        body = response.json()
        pixels = np.asarray(body["pixels"], dtype=np.float32).reshape(-1, 28, 28)
        return DecodedPixels(model_id=body["model_id"], pixels=pixels)

    return Call(
        "POST",
        "/decode",
        parse,
        params={"format": "pixels"},
        json={"latents": latent_rows(latents)},
    )


def decode_grid(
    latents: LatentsInput | LatentInput, nrow: int | None, scale: int | None
) -> Call[PngImage]:
    return Call(
        "POST",
        "/decode",
        _png,
        params=_query(format="png", nrow=nrow, scale=scale),
        json={"latents": latent_rows(latents)},
    )


def interpolate(
    start: ImageInput,
    end: ImageInput,
    steps: int,
    method: Literal["linear", "slerp"],
    scale: int | None,
    preprocess: Preprocess,
) -> Call[PngImage]:
    return Call(
        "POST",
        "/interpolate",
        _png,
        params=_query(steps=steps, method=method, scale=scale, preprocess=preprocess),
        files=[("start", as_upload(start, "start")), ("end", as_upload(end, "end"))],
    )


def interpolate_latents(
    start: LatentInput,
    end: LatentInput,
    steps: int,
    method: Literal["linear", "slerp"],
    scale: int | None,
) -> Call[PngImage]:
    return Call(
        "POST",
        "/interpolate",
        _png,
        params=_query(steps=steps, method=method, scale=scale),
        json={"start": latent_vector(start), "end": latent_vector(end)},
    )


def model() -> Call[ModelCard]:
    return Call("GET", "/model", lambda response: ModelCard.from_json(response.json()))


def _image_parts(images: Sequence[ImageInput] | np.ndarray) -> list[tuple[str, Upload]]:
    if isinstance(images, np.ndarray):
        images = list(images)  # (N, H, W) or (N, 784): one image per row
    if isinstance(images, str | bytes | bytearray) or not isinstance(images, Sequence):
        raise TypeError("pass a list of images (one image: [image])")
    if not images:
        raise ValueError("pass at least one image")
    return [("files", as_upload(image, f"image{index}")) for index, image in enumerate(images)]
