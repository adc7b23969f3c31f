"""The lean multipart reader behind /anomaly-score: parts, order, bytes and malformed bodies."""

from __future__ import annotations

import asyncio
import os

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.multipart import MultipartError, Part, TooManyPartsError, read_parts

BOUNDARY = "b0undary"


def body_of(*parts: tuple[str, str | None, bytes]) -> bytes:
    """(name, filename or None for a text field, data) -> a multipart/form-data body."""
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        chunks += [data, b"\r\n"]
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


def read(
    body: bytes, content_type: str | None = None, chunk: int = 7, max_parts: int = 10
) -> list[Part]:
    """Feed `body` in small chunks, as a slow client would send it."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    header = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", header.encode())]}
    return asyncio.run(read_parts(Request(scope, receive), max_parts))


def test_parts_come_back_in_order_with_their_exact_bytes() -> None:
    binary = os.urandom(3000) + b"\r\n--b0undar" + os.urandom(100)  # near-boundary bytes too
    parts = read(body_of(("files", "a.png", binary), ("note", None, b"hi"), ("files", "", b"x")))
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [
        ("files", "a.png", binary),
        ("note", None, b"hi"),
        ("files", "", b"x"),
    ]
    assert [p.is_file for p in parts] == [True, False, True]


def test_a_body_without_boundary_parameter_is_refused() -> None:
    with pytest.raises(MultipartError, match="boundary"):
        read(body_of(("files", "a", b"x")), content_type="multipart/form-data")


def test_a_body_cut_short_is_refused() -> None:
    whole = body_of(("files", "a.png", b"abcdef"))
    with pytest.raises(MultipartError):
        read(whole[: len(whole) - 12])


def test_garbage_is_refused() -> None:
    with pytest.raises(MultipartError):
        read(b"this is not multipart at all")


def test_parsing_stops_at_the_part_limit() -> None:
    many = body_of(*[("files", f"{i}.png", b"x") for i in range(50)])
    with pytest.raises(TooManyPartsError):
        read(many, max_parts=5)
    assert len(read(many, max_parts=50)) == 50
