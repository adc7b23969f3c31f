"""Hostile requests: bodies, headers and query strings a careless or malicious client sends.

Each must get a 4xx with a small JSON `detail` and an X-Request-ID, and leave the keep-alive
connection usable (except the few that declare a body too large to read: `closes`). The
test suite sends them all through a live server (tests/test_hostile_bodies.py); the soak in
benchmarks/hostile/__main__.py rotates through them for minutes.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
from dataclasses import dataclass, field

from PIL import Image

from benchmarks.hostile.images import blank_png, encoded, png_declaring

JSON = "application/json"
BOUNDARY = "hostile-boundary-7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# The corpus assumes the server's body limit is at least this (the tests set it).
BODY_LIMIT_AT_LEAST = 2 * 1024 * 1024


@dataclass(frozen=True)
class HostileRequest:
    name: str
    path: str
    body: bytes
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # sent with Transfer-Encoding: chunked, no Content-Length
    closes: bool = False  # the server may (should) close the connection after answering
    statuses: tuple[int, ...] = (422,)


def part(name: str, data: bytes, filename: str | None = "x.png", headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n"
    return head.encode() + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def files(*payloads: bytes) -> bytes:
    return form(*(part("files", data, f"{index}.png") for index, data in enumerate(payloads)))


def tiny_png() -> bytes:
    return encoded(28, 28, "PNG")


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 20,000 x 20,000 (400 MP) around a 1x1 frame."""
    data = bytearray(encoded(1, 1, "GIF"))
    data[6:10] = (20_000).to_bytes(2, "little") * 2
    return bytes(data)


def broken_images() -> list[bytes]:
    """64 uploads, each broken in its own way (the first good one would be scored)."""
    png = tiny_png()
    broken = [
        b"",
        b"\x00" * 100,
        b"GIF89a",
        png[:40],
        png[:-12],
        png[:30] + b"\xff" * 8 + png[38:],  # corrupt IDAT start
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        png_declaring(1, 10_000_000),
        png_declaring(30_000, 30_000),
        gif_bomb(),
        encoded(28, 28, "JPEG")[:50],
        encoded(28, 28, "TIFF")[:60],
        encoded(28, 28, "BMP")[:40],
        encoded(28, 28, "WEBP")[:30],
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.4\n",
        "é".encode() * 50,
    ]
    return [broken[index % len(broken)] for index in range(64)]


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def pixel_rows(rows: int, value: str = "0.0", length: int = 784) -> bytes:
    row = "[" + ",".join([value] * length) + "]"
    return ('{"pixels": [' + ",".join([row] * rows) + "]}").encode()


def corpus() -> list[HostileRequest]:
    score, reconstruct, sample = "/anomaly-score", "/reconstruct", "/sample"
    png = tiny_png()
    long_boundary = "multipart/form-data; boundary=" + "b" * 300
    requests = [
        # JSON that is no JSON, or JSON no parser should follow
        HostileRequest("empty json body", score, b""),
        HostileRequest("deep array nesting", score, deep(5000)),
        HostileRequest("deep object nesting", score, b'{"a":' * 3000 + b"1" + b"}" * 3000),
        HostileRequest("invalid utf-8", score, b"\xff\xfe\xfd"),
        HostileRequest("gzip sent as json", score, gzip.compress(pixel_rows(1))),
        HostileRequest(
            "gzip with content-encoding",
            score,
            gzip.compress(pixel_rows(1)),
            headers={"Content-Encoding": "gzip"},
        ),
        HostileRequest("5000-digit integer", score, b'{"pixels": [[' + b"7" * 5000 + b"]]}"),
        HostileRequest("NaN literal", score, pixel_rows(1, "NaN")),
        HostileRequest("1e400 overflow", score, pixel_rows(1, "1e400")),
        HostileRequest(
            "1 MB of empty strings", score, b'{"pixels": [[' + b",".join([b'""'] * 340_000) + b"]]}"
        ),
        HostileRequest("64 rows of 784 empty strings", score, pixel_rows(64, '""')),
        HostileRequest("strings where numbers go", score, pixel_rows(2, '"0.5"')),
        HostileRequest("nulls where numbers go", score, pixel_rows(1, "null")),
        HostileRequest("booleans where numbers go", score, pixel_rows(1, "true")),
        HostileRequest("objects where numbers go", score, pixel_rows(1, "{}")),
        HostileRequest("nested arrays in a row", score, pixel_rows(1, "[0.0]")),
        HostileRequest(
            "ragged nesting in a row", score, pixel_rows(1, "0.0", 783)[:-3] + b",[[0]]]]}"
        ),
        HostileRequest("short rows", score, pixel_rows(3, "0.0", 783)),
        HostileRequest("65 rows", score, pixel_rows(65)),
        HostileRequest("values outside [0, 1]", score, pixel_rows(1, "-3")),
        HostileRequest("pixels is a string", score, b'{"pixels": "abc"}'),
        HostileRequest("pixels is empty", score, b'{"pixels": []}'),
        HostileRequest("images not base64", score, b'{"images": ["***"]}'),
        HostileRequest("images are numbers", score, b'{"images": [1, 2]}'),
        HostileRequest(
            "base64 of garbage",
            score,
            json.dumps({"images": [base64.b64encode(b"garbage" * 100).decode()]}).encode(),
            statuses=(415,),
        ),
        HostileRequest(
            "base64 gif bomb",
            score,
            json.dumps({"images": [base64.b64encode(gif_bomb()).decode()]}).encode(),
        ),
        HostileRequest("both images and pixels", score, b'{"images": ["aGk="], "pixels": [[0.0]]}'),
        HostileRequest("1 MB unknown key", score, b'{"' + b"k" * 1_000_000 + b'": 1}'),
        HostileRequest("top-level array", score, b"[1, 2, 3]"),
        HostileRequest("top-level string", score, b'"pixels"'),
        HostileRequest("NUL bytes", score, b"\x00" * 1000),
        HostileRequest("NUL inside a string", score, b'{"images": ["aGk\x00="]}'),
        HostileRequest("UTF-8 BOM", score, b"\xef\xbb\xbf" + pixel_rows(1)),
        HostileRequest("trailing garbage", score, pixel_rows(1) + b" trailing"),
        HostileRequest(
            "utf-16 charset",
            score,
            pixel_rows(1).decode().encode("utf-16"),
            content_type="application/json; charset=utf-16",
        ),
        HostileRequest("chunked deep nesting", score, deep(5000), chunked=True),
        HostileRequest(
            "chunked 1 MB of empty strings",
            score,
            b'{"pixels": [[' + b",".join([b'""'] * 340_000) + b"]]}",
            chunked=True,
        ),
        # content types
        HostileRequest("no content type", score, pixel_rows(1), content_type=None, statuses=(415,)),
        HostileRequest(
            "text/plain", score, pixel_rows(1), content_type="text/plain", statuses=(415,)
        ),
        HostileRequest(
            "multipart/mixed", score, files(png), content_type="multipart/mixed", statuses=(415,)
        ),
        HostileRequest(
            "form-urlencoded",
            score,
            b"pixels=1",
            content_type="application/x-www-form-urlencoded",
            statuses=(415,),
        ),
        # multipart framing
        HostileRequest(
            "300-char boundary", score, b"--" + b"b" * 300 + b"\r\n", content_type=long_boundary
        ),
        HostileRequest(
            "300-char boundary, /reconstruct",
            reconstruct,
            b"--" + b"b" * 300 + b"\r\n",
            content_type=long_boundary,
        ),
        HostileRequest("no boundary", score, files(png), content_type="multipart/form-data"),
        HostileRequest("truncated multipart", score, files(png)[:-20], content_type=MULTIPART),
        HostileRequest("multipart without parts", score, form(), content_type=MULTIPART),
        HostileRequest("garbage as multipart", score, b"\x00\xff" * 500, content_type=MULTIPART),
        HostileRequest(
            "20 KB part header",
            score,
            form(part("files", png, headers="X-Pad: " + "p" * 20_000 + "\r\n")),
            content_type=MULTIPART,
        ),
        HostileRequest(
            "part without disposition",
            score,
            f"--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
            content_type=MULTIPART,
        ),
        HostileRequest(
            "file sent as text field", score, form(part("files", png, None)), content_type=MULTIPART
        ),
        HostileRequest("wrong field name", score, form(part("image", png)), content_type=MULTIPART),
        HostileRequest("300 parts", score, files(*[png] * 300), content_type=MULTIPART),
        HostileRequest(
            "two files to /reconstruct",
            reconstruct,
            form(part("file", png), part("file", png)),
            content_type=MULTIPART,
        ),
        HostileRequest("json to /reconstruct", reconstruct, pixel_rows(1), statuses=(415,)),
        HostileRequest(
            "chunked truncated multipart",
            score,
            files(png)[:-20],
            content_type=MULTIPART,
            chunked=True,
        ),
        # images
        HostileRequest("empty file", score, files(b""), content_type=MULTIPART),
        HostileRequest(
            "NUL-byte file", score, files(b"\x00" * 4096), content_type=MULTIPART, statuses=(415,)
        ),
        HostileRequest(
            "64 images broken 17 ways",
            score,
            files(*broken_images()),
            content_type=MULTIPART,
            statuses=(415, 422),
        ),
        HostileRequest("gif bomb", score, files(gif_bomb()), content_type=MULTIPART),
        HostileRequest(
            "1 x 10,000,000 png", score, files(blank_png(1, 10_000_000)), content_type=MULTIPART
        ),
        HostileRequest(
            "30000x30000 png bomb",
            reconstruct,
            form(part("file", png_declaring(30_000, 30_000))),
            content_type=MULTIPART,
        ),
        HostileRequest(
            "64 x 5000x5000 zero pngs",
            score,
            files(*[blank_png(5000, 5000)] * 64),
            content_type=MULTIPART,
        ),
        HostileRequest("65 files", score, files(*[png] * 65), content_type=MULTIPART),
        HostileRequest(
            "preprocess=none with a 29x29",
            f"{score}?preprocess=none",
            files(encoded(29, 29, "PNG")),
            content_type=MULTIPART,
        ),
        HostileRequest(
            "k x images over the limit", f"{score}?score=iwae_nll&k=1000", pixel_rows(64)
        ),
        # query strings
        HostileRequest("k=0", f"{score}?k=0", pixel_rows(1)),
        HostileRequest("k=abc", f"{score}?k=abc", pixel_rows(1)),
        HostileRequest("k=10^30", f"{score}?k=" + "9" * 30, pixel_rows(1)),
        HostileRequest("unknown score", f"{score}?score=nope", pixel_rows(1)),
        HostileRequest("threshold=nan", f"{score}?threshold=nan", pixel_rows(1)),
        HostileRequest("fpr=1", f"{score}?fpr=1", pixel_rows(1)),
        HostileRequest("threshold and fpr", f"{score}?threshold=1&fpr=0.1", pixel_rows(1)),
        HostileRequest("unknown option", f"{score}?bogus=1", pixel_rows(1)),
        HostileRequest(
            "scale=1000",
            f"{reconstruct}?scale=1000",
            form(part("file", png)),
            content_type=MULTIPART,
        ),
        # /sample
        HostileRequest("sample: invalid utf-8", sample, b"\xff\xfe"),
        HostileRequest("sample: deep nesting", sample, deep(5000)),
        HostileRequest("sample: seed false", sample, b'{"seed": false}'),
        HostileRequest("sample: n true", sample, b'{"n": true}'),
        HostileRequest("sample: n 1e10", sample, b'{"n": 1e10}'),
        HostileRequest("sample: seed 2^64", sample, b'{"seed": 18446744073709551616}'),
        HostileRequest("sample: truncated", sample, b'{"n": 4'),
        HostileRequest("sample: array", sample, b"[4]"),
        # bodies over the limit
        HostileRequest(
            "declared body over the limit",
            score,
            b"",
            statuses=(413,),
            closes=True,
            headers={"Content-Length": str(10**12)},
        ),
        HostileRequest(
            "chunked body over the limit",
            score,
            b"[" * (BODY_LIMIT_AT_LEAST * 4),
            chunked=True,
            statuses=(413,),
            closes=True,
        ),
    ]
    return requests


def valid_png_request() -> HostileRequest:
    """The ordinary request sent after each hostile one, on the same connection."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format="PNG")
    return HostileRequest(
        "valid", "/anomaly-score", files(buffer.getvalue()), content_type=MULTIPART, statuses=(200,)
    )


def send(
    connection: http.client.HTTPConnection, request: HostileRequest
) -> tuple[int, dict[str, str], bytes, bool]:
    """Send `request` as it was built (chunked, a lying Content-Length, or plain) and read the
    reply: status, headers, body, and whether the server will close the connection."""
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    headers |= request.headers
    if request.chunked:
        chunks = (request.body[at : at + 65536] for at in range(0, len(request.body), 65536))
        connection.request("POST", request.path, chunks, headers, encode_chunked=True)
    elif "Content-Length" in headers:
        connection.putrequest("POST", request.path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
    else:
        connection.request("POST", request.path, request.body, headers)
    response = connection.getresponse()
    body = response.read()
    return response.status, dict(response.getheaders()), body, response.will_close
