"""The lean multipart reader behind /anomaly-score: parts, order, bytes and malformed bodies."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.multipart import MultipartError, Part, TooManyPartsError, read_parts, split_plain_body
from benchmarks.hostile.corpus import BOUNDARY as HOSTILE_BOUNDARY
from benchmarks.hostile.corpus import corpus

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
    # Near-boundary bytes too; the "x" keeps them from completing a real delimiter.
    binary = os.urandom(3000) + b"\r\n--b0undar" + b"x" + os.urandom(100)
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


# --- The fast path for plain bodies (split_plain_body) against the parser ----------------


def parsed(body: bytes, boundary: bytes, max_parts: int) -> list[tuple[object, ...]] | str:
    """The parser's answer for a body in one chunk: the parts, or its error."""
    try:
        content_type = f"multipart/form-data; boundary={boundary.decode()}"
        parts = read(body, content_type, len(body) or 1, max_parts)
    except MultipartError as exc:
        return f"{type(exc).__name__}: {exc}"
    return [(p.name, p.filename, bytes(p.data)) for p in parts]


def agree(body: bytes, boundary: bytes = BOUNDARY.encode(), max_parts: int = 10) -> bool:
    """True when the fast path took the body (and then it must equal the parser's parts)."""
    fast = split_plain_body(body, boundary, max_parts)
    if fast is None:
        return False
    assert [(p.name, p.filename, bytes(p.data)) for p in fast] == parsed(body, boundary, max_parts)
    return True


def plain_bodies() -> list[bytes]:
    # Near misses of the delimiter. The bytes beside the random run are fixed: a random "y"
    # after "--b0undar", or "\r\n" before "--b0undary", made a real delimiter (1 run in 213).
    near = b"\r\n--b0undar" + b"x" + os.urandom(48) + b"x" + b"--b0undary" + b"\r\n-"
    return [
        body_of(("files", "a.png", b"\x89PNG" + os.urandom(200))),
        body_of(*[("files", f"{i}.png", os.urandom(i * 7)) for i in range(64)]),
        body_of(("files", "a.png", near), ("note", None, b"hi"), ("files", "", b"x")),
        body_of(("files", 'q"uo\\te', b"\r\n\r\n"), ("f\u00e9", "\u00e9.png", b"")),
        body_of(("files", "a.png", b"abc"))[:-2],  # no CRLF after the closing delimiter
        body_of(("files", "a.png", b"abc")).replace(
            b"\r\n\r\n", b"\r\nContent-Type:   image/png\r\n\r\n", 1
        ),
    ]


def test_the_fast_path_takes_plain_bodies_and_agrees_with_the_parser() -> None:
    assert all(agree(body, max_parts=64) for body in plain_bodies())


def test_the_fast_path_leaves_too_many_parts_to_the_parser() -> None:
    many = body_of(*[("files", f"{i}.png", b"x") for i in range(6)])
    assert split_plain_body(many, BOUNDARY.encode(), 5) is None
    assert agree(many, max_parts=6)


def test_the_fast_path_agrees_on_the_hostile_corpus() -> None:
    taken = 0
    for request in corpus():
        if request.content_type and request.content_type.startswith("multipart/form-data"):
            taken += agree(request.body, HOSTILE_BOUNDARY.encode())
    assert taken > 0  # the corpus has well-formed multipart bodies too


def test_the_fast_path_agrees_on_mutated_bodies() -> None:
    rng = random.Random(13)
    alphabet = b'\r\n-:; ="b0undary'
    taken = 0
    for body in plain_bodies()[:1] + plain_bodies()[2:]:
        for _ in range(400):
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(mutated))
                action = rng.randrange(3)
                if action == 0:
                    mutated[at] = rng.choice(alphabet)
                elif action == 1:
                    mutated.insert(at, rng.choice(alphabet))
                else:
                    del mutated[at]
            taken += agree(bytes(mutated))
    assert taken > 100
