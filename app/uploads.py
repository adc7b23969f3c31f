"""Request bodies -> model input: every reader of uploads (multipart files, base64 JSON
images, JSON pixels) returns (B, 28, 28) float32 pixels in [0, 1], or raises a ClientError.

Runs on the event loop; decoding more than a few tiny PNGs goes to the thread pool.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.config import Settings
from app.errors import InvalidInputError, UnsupportedMediaTypeError, describe_validation_errors
from app.imaging import (
    DecodeLimits,
    Digits,
    Preprocess,
    image_bytes_to_digits,
    is_small_png,
    pixels_to_array,
)
from app.multipart import MultipartError, Part, TooManyPartsError, read_parts
from app.schemas import SampleRequest

# A few MNIST-sized PNGs decode in tens of microseconds: less than handing them to a
# thread costs. Anything larger, or in another format, is decoded in the thread pool.
INLINE_DECODE_MAX_IMAGES = 4
INLINE_DECODE_MAX_SIDE = 64
# Form fields besides the file field that a multipart request may carry (they are ignored).
MAX_OTHER_PARTS = 16

Body = TypeVar("Body", bound=BaseModel)


async def read_images(request: Request, preprocess: Preprocess, settings: Settings) -> np.ndarray:
    """multipart `files`, JSON `images` (base64) or JSON `pixels` -> (B, 28, 28) pixels."""
    return (await read_digits(request, preprocess, settings)).pixels


async def read_digits(request: Request, preprocess: Preprocess, settings: Settings) -> Digits:
    """multipart `files`, JSON `images` (base64) or JSON `pixels` -> (B, 28, 28) pixels, and
    which of them preprocess=mnist refitted (JSON pixels never are)."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        payloads = await _uploaded_files(request, "files", settings.max_batch, " (VAE_MAX_BATCH)")
    elif content_type == "application/json":
        field, items = json_images_or_pixels(await request.body(), settings.max_batch)
        if field == "pixels":
            pixels = await run_in_threadpool(pixels_to_array, items)
            return Digits(pixels, np.zeros(len(pixels), dtype=bool))
        payloads = [_base64_image(text, index) for index, text in enumerate(items)]
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data "
            "with one or more 'files', or application/json with 'images' or 'pixels'"
        )
    label = "files" if content_type == "multipart/form-data" else "images"
    return await decode_digits(payloads, preprocess, decode_limits(settings), label)


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
    limits = decode_limits(settings)
    if len(fields) == 1:
        return await decode_uploads(payloads, preprocess, limits, fields[0])
    # One by one, so that an error names the field ("end[0]: not an image ..."); each gets
    # its share of the request's decode budget.
    share = replace(limits, max_request_pixels=limits.max_request_pixels // len(fields))
    digits = [
        await decode_uploads([data], preprocess, share, field)
        for data, field in zip(payloads, fields, strict=True)
    ]
    return np.concatenate(digits)


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
        max_aspect_ratio=settings.max_image_aspect_ratio,
    )


async def decode_uploads(
    payloads: list[bytes], preprocess: Preprocess, limits: DecodeLimits, label: str
) -> np.ndarray:
    """Image files -> (B, 28, 28) pixels; inline when tiny, else in the thread pool."""
    return (await decode_digits(payloads, preprocess, limits, label)).pixels


async def decode_digits(
    payloads: list[bytes], preprocess: Preprocess, limits: DecodeLimits, label: str
) -> Digits:
    """Image files -> their pixels and refit flags; inline when tiny, else in the thread
    pool."""
    if len(payloads) <= INLINE_DECODE_MAX_IMAGES and all(
        is_small_png(data, INLINE_DECODE_MAX_SIDE) for data in payloads
    ):
        return image_bytes_to_digits(payloads, preprocess, limits, label)
    return await run_in_threadpool(image_bytes_to_digits, payloads, preprocess, limits, label)


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


async def read_sample_request(request: Request) -> SampleRequest:
    """The optional JSON body of /sample. Read here rather than by FastAPI, which answered
    a body that is no UTF-8 or nested too deep with 400 where every other route says 422."""
    raw = await request.body()
    if not raw.strip():
        return SampleRequest()
    try:
        return SampleRequest.model_validate(load_json(raw))
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise InvalidInputError(describe_validation_errors(errors)) from None


def load_json(raw: bytes) -> Any:
    """orjson rather than the json module: one exception type for every malformed body
    (json raised RecursionError for deep nesting, UnicodeDecodeError for bytes that are no
    UTF-8, ValueError for integers over 4,300 digits: 500s, issue 12), a nesting limit of
    1,024, and 2.0 ms against 7.5 ms for 64 rows of 784 pixels (timeit, this machine)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = exc
    # orjson refuses some of what json reads: NaN, Infinity, 1e400, integers over 64 bits.
    # Read those with json (guarded) so the validators can name the element and the rule
    # ("pixels[0] contains NaN or infinity"); only bodies orjson refused pay for this.
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidInputError(f"the body is not valid JSON ({error})") from None


def json_images_or_pixels(raw: bytes, max_batch: int) -> tuple[str, list[Any]]:
    """AnomalyJsonBody (the schema /docs shows), checked by hand: counts and shapes before
    any element, so a huge body of bad values costs one message, not one per value."""
    body = load_json(raw)
    if not isinstance(body, dict):
        raise InvalidInputError(
            f"the JSON body is {_json_type(body)}; send an object with 'images' or 'pixels'"
        )
    unknown = sorted(set(body) - {"images", "pixels"})
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise InvalidInputError(
            f"unknown field(s) {names}: send exactly one of 'images' or 'pixels'"
        )
    if len(body) != 1:
        raise InvalidInputError("send exactly one of 'images' or 'pixels'")
    ((field, items),) = body.items()
    if not isinstance(items, list) or not items:
        raise InvalidInputError(f"'{field}' must be a non-empty list, got {_json_type(items)}")
    _check_count(len(items), max_batch, field)
    expected = "string" if field == "images" else "list"
    for index, item in enumerate(items):
        if not isinstance(item, str if field == "images" else list):
            raise InvalidInputError(
                f"{field}[{index}] is {_json_type(item)}; expected a {expected}"
            )
    return field, items


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_json(raw: bytes, schema: type[Body], context: dict[str, Any] | None = None) -> Body:
    """A JSON body validated by `schema` (with `context` for its validators), or a 422."""
    try:
        return schema.model_validate(load_json(raw), context=context)
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
