"""Request bodies -> model input: every reader of uploads (multipart files, base64 JSON
images, JSON pixels) returns (B, 28, 28) float32 pixels in [0, 1], or raises a ClientError.

Runs on the event loop; decoding more than a few tiny PNGs goes to the thread pool.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.config import Settings
from app.errors import InvalidInputError, UnsupportedMediaTypeError, describe_validation_errors
from app.imaging import Preprocess, image_bytes_to_pixels, is_small_png, pixels_to_array
from app.multipart import MultipartError, Part, TooManyPartsError, read_parts
from app.schemas import AnomalyJsonBody

# A few MNIST-sized PNGs decode in tens of microseconds: less than handing them to a
# thread costs. Anything larger, or in another format, is decoded in the thread pool.
INLINE_DECODE_MAX_IMAGES = 4
INLINE_DECODE_MAX_SIDE = 64
# Form fields besides the file field that a multipart request may carry (they are ignored).
MAX_OTHER_PARTS = 16

Body = TypeVar("Body", bound=BaseModel)


async def read_images(request: Request, preprocess: Preprocess, settings: Settings) -> np.ndarray:
    """multipart `files`, JSON `images` (base64) or JSON `pixels` -> (B, 28, 28) pixels."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        payloads = await _uploaded_files(request, "files", settings.max_batch, " (VAE_MAX_BATCH)")
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


async def read_image(
    request: Request, field: str, preprocess: Preprocess, settings: Settings
) -> np.ndarray:
    """The one picture sent as multipart/form-data field `field` -> (1, 28, 28) pixels."""
    return await read_named_images(request, (field,), preprocess, settings)


async def read_named_images(
    request: Request, fields: Sequence[str], preprocess: Preprocess, settings: Settings
) -> np.ndarray:
    """One picture in each multipart/form-data field of `fields` -> (len(fields), 28, 28)
    pixels in the order of `fields` (the body is read once)."""
    names = " and ".join(f"'{field}'" for field in fields)
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send the picture{'s' if len(fields) > 1 else ''} as multipart/form-data with "
            f"one file in {'each of the fields' if len(fields) > 1 else 'field'} {names}"
        )
    parts = await _form_parts(request, len(fields), "")
    payloads = [_files_in(parts, field, 1, "")[0] for field in fields]
    if len(fields) == 1:
        return await decode_uploads(payloads, preprocess, settings.max_image_pixels, fields[0])
    # One by one, so that an error names the field ("end[0]: not an image ...").
    digits = [
        await decode_uploads([data], preprocess, settings.max_image_pixels, field)
        for data, field in zip(payloads, fields, strict=True)
    ]
    return np.concatenate(digits)


async def decode_uploads(
    payloads: list[bytes], preprocess: Preprocess, max_pixels: int, label: str
) -> np.ndarray:
    """Image files -> (B, 28, 28) pixels; inline when tiny, else in the thread pool."""
    if len(payloads) <= INLINE_DECODE_MAX_IMAGES and all(
        is_small_png(data, INLINE_DECODE_MAX_SIDE) for data in payloads
    ):
        return image_bytes_to_pixels(payloads, preprocess, max_pixels, label)
    return await run_in_threadpool(image_bytes_to_pixels, payloads, preprocess, max_pixels, label)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _uploaded_files(
    request: Request, field: str, max_files: int, setting: str
) -> list[bytes]:
    """The files of multipart field `field`, in order: at least one, at most max_files
    (`setting` names the knob for that limit in messages), each attached as a file."""
    return _files_in(await _form_parts(request, max_files, setting), field, max_files, setting)


def _files_in(parts: list[Part], field: str, max_files: int, setting: str) -> list[bytes]:
    files = [part for part in parts if part.name == field]
    if not files:
        raise InvalidInputError(f"no file: send the picture(s) in the multipart field '{field}'")
    if len(files) > max_files:
        raise InvalidInputError(
            f"{len(files)} files in field '{field}'; at most {max_files}{setting} per request"
        )
    for index, part in enumerate(files):
        if not part.is_file:
            raise InvalidInputError(f"{field}[{index}] is a text field; attach it as a file")
    return [bytes(part.data) for part in files]


async def _form_parts(request: Request, max_files: int, setting: str) -> list[Part]:
    """Every part of the body. Parts beyond max_files + MAX_OTHER_PARTS stop the parser
    early; too many files still get this service's 422, whatever else the form carries."""
    try:
        return await read_parts(request, max_parts=max_files + MAX_OTHER_PARTS)
    except TooManyPartsError:
        raise InvalidInputError(
            f"too many parts in one request; at most {max_files} "
            f"file{'s' if max_files > 1 else ''}{setting} and {MAX_OTHER_PARTS} other fields "
            "are accepted"
        ) from None
    except MultipartError as exc:
        raise InvalidInputError(f"the multipart body could not be parsed: {exc}") from None


def _parse_json_body(raw: bytes) -> AnomalyJsonBody:
    return parse_json(raw, AnomalyJsonBody)


def parse_json(raw: bytes, schema: type[Body], context: dict[str, Any] | None = None) -> Body:
    """A JSON body validated by `schema` (with `context` for its validators), or a 422."""
    try:
        return schema.model_validate(json.loads(raw), context=context)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"the body is not valid JSON ({exc.msg} at byte {exc.pos})"
        ) from None
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_errors(exc.errors())) from None


def _base64_image(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # accept data URLs as browsers write them
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"images[{index}] is not valid base64") from None


def _check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise InvalidInputError(
            f"{count} {field} in one request; at most {limit} (VAE_MAX_BATCH) are accepted"
        )
