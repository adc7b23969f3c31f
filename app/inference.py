"""What each endpoint does, between parsing (routes) and the model (runtime).

Decoding images and encoding PNGs run in the thread pool; model work goes through the
dynamic batcher's single inference thread. Nothing here blocks the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Hashable

import numpy as np
import torch
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.batching import BatchOutputs
from app.config import Settings
from app.deps import Services
from app.errors import describe_validation_errors
from app.imaging import (
    ImageInputError,
    Preprocess,
    image_bytes_to_pixels,
    is_small_png,
    pixels_to_array,
    pixels_to_tensor,
)
from app.multipart import MultipartError, Part, TooManyPartsError, read_parts
from app.runtime import LoadedModel
from app.schemas import (
    AnomalyJsonBody,
    AnomalyOptions,
    AnomalyResponse,
    ImageScore,
    ReconstructOptions,
    SampleRequest,
    ScoreName,
)
from vae_common.grid import make_grid, png_bytes
from vae_common.scoring import MONTE_CARLO_SCORES, SCORE_DEFINITIONS, default_samples

# Batch keys name the computation: requests share a forward pass only when keys are equal.
RECONSTRUCT_KEY = ("reconstruct",)
# A few MNIST-sized PNGs decode in tens of microseconds: less than handing them to a
# thread costs. Anything larger, or in another format, is decoded in the thread pool.
INLINE_DECODE_MAX_IMAGES = 4
INLINE_DECODE_MAX_SIDE = 64
# Form fields besides 'files' that a multipart request may carry (they are ignored).
MAX_OTHER_PARTS = 16


def score_key(score_name: str, k: int | None) -> tuple[str, str, int | None]:
    return ("score", score_name, k)


class UnsupportedMediaTypeError(ImageInputError):
    status_code = 415


def run_batch(model: LoadedModel, key: Hashable, pixels: np.ndarray) -> BatchOutputs:
    """The batcher's worker: one forward pass for the (N, 28, 28) pixels of every request
    queued under `key`.

    Scores come back as numpy arrays: the batcher slices them per request and the event loop
    reads them value by value, both several times cheaper on arrays than on tensors.
    """
    images = pixels_to_tensor(pixels)
    if key == RECONSTRUCT_KEY:
        return model.reconstruct(images)
    assert isinstance(key, tuple) and key[0] == "score", key
    result = model.score(images, str(key[1]), key[2])
    return result.score.numpy(), result.reconstruction_loss.numpy(), result.kl.numpy()


def sample_png(model: LoadedModel, request: SampleRequest, seed: int) -> bytes:
    digits = model.sample(request.n, request.temperature, seed)  # (n, 1, 28, 28)
    nrow = request.nrow or math.ceil(math.sqrt(request.n))
    return png_bytes(make_grid(digits, nrow=nrow))


async def reconstruct_png(
    data: bytes, options: ReconstructOptions, services: Services
) -> tuple[bytes, float]:
    """One uploaded picture -> PNG of its reconstruction (or input|reconstruction) and loss."""
    max_pixels = services.settings.max_image_pixels
    x = await decode_uploads([data], options.preprocess, max_pixels, "file")
    reconstruction, recon_loss = await services.batcher.submit(RECONSTRUCT_KEY, x)
    services.metrics.images.labels("reconstruct").inc()
    shown = [pixels_to_tensor(x), reconstruction] if options.layout == "pair" else [reconstruction]
    png = await run_in_threadpool(
        lambda: png_bytes(
            make_grid(torch.cat(shown), nrow=len(shown), padding=0), scale=options.scale
        )
    )
    return png, float(recon_loss[0])


async def read_anomaly_images(
    request: Request, preprocess: Preprocess, settings: Settings
) -> np.ndarray:
    """multipart `files`, JSON `images` (base64) or JSON `pixels` -> (B, 28, 28) pixels."""
    content_type = _media_type(request)
    if content_type == "multipart/form-data":
        payloads = await _multipart_files(request, settings.max_batch)
    elif content_type == "application/json":
        body = _parse_json_body(await request.body())
        if body.pixels is not None:
            _check_count(len(body.pixels), settings.max_batch, "pixels")
            return await run_in_threadpool(pixels_to_array, body.pixels)
        assert body.images is not None  # guaranteed by AnomalyJsonBody's validator
        _check_count(len(body.images), settings.max_batch, "images")
        payloads = [_base64_image(text, index) for index, text in enumerate(body.images)]
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data "
            "with one or more 'files', or application/json with 'images' or 'pixels'"
        )
    label = "files" if content_type == "multipart/form-data" else "images"
    return await decode_uploads(payloads, preprocess, settings.max_image_pixels, label)


async def decode_uploads(
    payloads: list[bytes], preprocess: Preprocess, max_pixels: int, label: str
) -> np.ndarray:
    """Image files -> (B, 28, 28) pixels; inline when tiny, else in the thread pool."""
    if len(payloads) <= INLINE_DECODE_MAX_IMAGES and all(
        is_small_png(data, INLINE_DECODE_MAX_SIDE) for data in payloads
    ):
        return image_bytes_to_pixels(payloads, preprocess, max_pixels, label)
    return await run_in_threadpool(image_bytes_to_pixels, payloads, preprocess, max_pixels, label)


async def score_anomalies(
    x: np.ndarray, options: AnomalyOptions, services: Services
) -> AnomalyResponse:
    model, settings = services.model, services.settings
    score_name = options.score.value if options.score else model.default_score
    k = None
    if score_name in MONTE_CARLO_SCORES:
        k = options.k or min(default_samples(score_name) or 1, settings.max_iwae_k)
    if k is not None and k > settings.max_iwae_k:
        raise ImageInputError(f"k must be at most {settings.max_iwae_k} (VAE_MAX_IWAE_K), got {k}")
    scores, recon, kl = await services.batcher.submit(score_key(score_name, k), x)
    services.metrics.images.labels("anomaly-score").inc(len(x))
    threshold = model.threshold(score_name, options.threshold, options.fpr)
    score_values = scores.astype(np.float64)
    percentiles = model.percentiles(score_name, score_values)
    results = [
        ImageScore(
            index=index,
            score=float(score_values[index]),
            reconstruction_loss=float(recon[index]),
            kl=float(kl[index]),
            percentile=round(float(percentiles[index]), 3),
            is_anomaly=bool(score_values[index] > threshold.value),
        )
        for index in range(len(x))
    ]
    return AnomalyResponse(
        model_id=model.model_id,
        score=ScoreName(score_name),
        score_definition=SCORE_DEFINITIONS[score_name],
        k=k,
        threshold=threshold.value,
        threshold_source=threshold.source,
        results=results,
    )


async def read_upload(request: Request, field: str) -> bytes:
    """The one file sent as multipart/form-data field `field` (what /reconstruct takes)."""
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send the picture as multipart/form-data with the file in field '{field}'"
        )
    (data,) = await _uploaded_files(request, field, 1, "")
    return data


async def _multipart_files(request: Request, max_batch: int) -> list[bytes]:
    return await _uploaded_files(request, "files", max_batch, " (VAE_MAX_BATCH)")


async def _uploaded_files(
    request: Request, field: str, max_files: int, setting: str
) -> list[bytes]:
    """The files of multipart field `field`, in order: at least one, at most max_files
    (`setting` names the knob for that limit in messages), each attached as a file."""
    files = [part for part in await _form_parts(request, max_files, setting) if part.name == field]
    if not files:
        raise ImageInputError(f"no file: send the picture(s) in the multipart field '{field}'")
    if len(files) > max_files:
        raise ImageInputError(
            f"{len(files)} files in field '{field}'; at most {max_files}{setting} per request"
        )
    for index, part in enumerate(files):
        if not part.is_file:
            raise ImageInputError(f"{field}[{index}] is a text field; attach it as a file")
    return [bytes(part.data) for part in files]


async def _form_parts(request: Request, max_files: int, setting: str) -> list[Part]:
    """Every part of the body. Parts beyond max_files + MAX_OTHER_PARTS stop the parser
    early; too many files still get this service's 422, whatever else the form carries."""
    try:
        return await read_parts(request, max_parts=max_files + MAX_OTHER_PARTS)
    except TooManyPartsError:
        raise ImageInputError(
            f"too many parts in one request; at most {max_files} "
            f"file{'s' if max_files > 1 else ''}{setting} and {MAX_OTHER_PARTS} other fields "
            "are accepted"
        ) from None
    except MultipartError as exc:
        raise ImageInputError(f"the multipart body could not be parsed: {exc}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _parse_json_body(raw: bytes) -> AnomalyJsonBody:
    try:
        return AnomalyJsonBody.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ImageInputError(f"the body is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    except ValidationError as exc:
        raise ImageInputError(describe_validation_errors(exc.errors())) from None


def _base64_image(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # accept data URLs as browsers write them
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"images[{index}] is not valid base64") from None


def _check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise ImageInputError(
            f"{count} {field} in one request; at most {limit} (VAE_MAX_BATCH) are accepted"
        )
