"""Reading multipart/form-data uploads: python-multipart's parser, without Starlette's forms.

`Request.form()` wraps every file part in an UploadFile backed by a SpooledTemporaryFile
and builds a FormData. For a one-image /anomaly-score request that cost ~53 us of the
event loop's time against ~15 us for driving the same parser straight into byte buffers
(measured with timeit on a 28x28 PNG), and the event loop is what a busy service runs
short of. The body is still streamed in chunks, so BodySizeLimitMiddleware cuts it off
as before; every part is held in memory, which that limit bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser
from python_multipart.multipart import parse_options_header as parse_header_options
from starlette.requests import Request

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# Part headers longer than this are no browser's or client's: refuse them rather than
# collect megabytes of "header" (the body limit would bound it, but not usefully).
MAX_PART_HEADER_BYTES = 8 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


class TooManyPartsError(MultipartError):
    """The body has more parts than the caller allows; parsing stopped there."""


@dataclass
class Part:
    name: str | None = None
    filename: str | None = None  # set (maybe empty) for a file, None for a text field
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


async def read_parts(request: Request, max_parts: int) -> list[Part]:
    """Every part of a multipart/form-data body, in order; MultipartError when malformed."""
    headers = request.headers
    boundary = _boundary(headers.get("content-type", ""))
    reader = _PartCollector(max_parts)
    stream = request.stream()
    try:
        # Inside the try: the constructor itself refuses a boundary over 256 bytes.
        parser = MultipartParser(boundary, reader.callbacks())
        first = await anext(stream, b"")
        # The whole body in one chunk (Content-Length says so: the server reads no more):
        # the common well-formed body splits with bytes.find; anything else, the parser.
        if first and headers.get("content-length") == str(len(first)):
            parts = split_plain_body(first, boundary, max_parts)
            if parts is not None:
                return parts
        parser.write(first)
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError(str(exc) or "malformed body") from None
    if not reader.finished:
        raise MultipartError("the body ends before the closing boundary")
    return reader.parts


# The fast path takes only what it can answer exactly as python-multipart would: a few short
# headers per part, token names, no bytes after the closing boundary but a CRLF.
_PLAIN_MAX_HEADERS = 4
_PLAIN_MAX_HEADER_LINE = 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PLAIN_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,./:=?-]{1,70}")


def split_plain_body(body: bytes, boundary: bytes, max_parts: int) -> list[Part] | None:
    """The parts of a plain, well-formed multipart body, as the parser would give them, or
    None for anything else (the parser then decides, with its errors). Tests compare both
    on normal and hostile bodies."""
    delimiter = b"--" + boundary
    opening = delimiter + b"\r\n"
    separator = b"\r\n" + opening
    if not body.startswith(opening) or not _PLAIN_BOUNDARY.fullmatch(boundary):
        return None
    closing = b"\r\n" + delimiter + b"--"
    if body.endswith(closing + b"\r\n"):
        inner = body[len(opening) : -len(closing) - 2]
    elif body.endswith(closing):
        inner = body[len(opening) : -len(closing)]
    else:
        return None
    segments = inner.split(separator)
    if len(segments) > max_parts:
        return None
    parts = []
    for segment in segments:
        end = segment.find(b"\r\n\r\n")
        if end <= 0 or b"\r\n" + delimiter in segment:
            return None  # no headers, or a delimiter that is no plain separator
        part = _plain_part(segment[:end].split(b"\r\n"))
        if part is None:
            return None
        part.data = bytearray(segment[end + 4 :])
        parts.append(part)
    return parts


def _plain_part(lines: list[bytes]) -> Part | None:
    if len(lines) > _PLAIN_MAX_HEADERS:
        return None
    disposition = b""
    for line in lines:
        name, colon, value = line.partition(b":")
        if (
            not colon
            or len(line) > _PLAIN_MAX_HEADER_LINE
            or not _TOKEN.fullmatch(name)
            or b"\r" in value
            or b"\n" in value
        ):
            return None
        if name.lower() == b"content-disposition":
            disposition = value.lstrip(b" ")
    _, options = parse_header_options(disposition)
    part = Part()
    if b"name" in options:
        part.name = options[b"name"].decode("utf-8", "replace")
    if b"filename" in options:
        part.filename = options[b"filename"].decode("utf-8", "replace")
    return part


def openapi_form(field_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `content` of a multipart/form-data body with one required field.

    Routes that read their body with `read_parts` describe it for /docs with this, since
    FastAPI sees no form parameters on them."""
    return {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {field_name: schema},
                "required": [field_name],
            }
        }
    }


def _boundary(content_type: str) -> bytes:
    _, options = parse_header_options(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MultipartError("the Content-Type header has no boundary parameter")
    return boundary


class _PartCollector:
    """python-multipart calls these as it walks the body; parts collect here."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.finished = False
        self._field = bytearray()
        self._value = bytearray()
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        if len(self.parts) == self.max_parts:
            raise TooManyPartsError(f"more than {self.max_parts} parts")
        self.parts.append(Part())
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header_size()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._field) + len(self._value) > MAX_PART_HEADER_BYTES:
            raise MultipartError(f"a part header is longer than {MAX_PART_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        if bytes(self._field).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_header_options(self._disposition)
        part = self.parts[-1]
        if b"name" in options:
            part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1].data += data[start:end]

    def _end(self) -> None:
        self.finished = True
