"""The hostile-body corpus through a real uvicorn over one keep-alive connection: every
request gets a 4xx with a small JSON detail and an X-Request-ID, and the connection then
serves an ordinary request (issue 12: after a 500 the connection was dropped)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.config import Settings
from app.main import create_app
from benchmarks.hostile.corpus import (
    BODY_LIMIT_AT_LEAST,
    HostileRequest,
    corpus,
    send,
    valid_png_request,
)
from scripts.live_server import live_server

MAX_ERROR_BYTES = 8 * 1024
CORPUS = corpus()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[tuple[str, int]]:
    settings = Settings(
        model_path=tiny_model_path, device="cpu", max_upload_bytes=BODY_LIMIT_AT_LEAST
    )
    with live_server(create_app(settings)) as url:
        address = urlsplit(url)
        assert address.hostname is not None and address.port is not None
        yield address.hostname, address.port


def test_the_corpus_has_at_least_50_kinds() -> None:
    assert len({request.name for request in CORPUS}) == len(CORPUS) >= 50


@pytest.mark.parametrize("request_", CORPUS, ids=[request.name for request in CORPUS])
def test_hostile_request_gets_a_small_4xx_and_the_connection_survives(
    server: tuple[str, int], request_: HostileRequest
) -> None:
    connection = http.client.HTTPConnection(*server, timeout=60)
    try:
        status, headers, body, will_close = send(connection, request_)
        assert status in request_.statuses, body[:300]
        assert headers.get("x-request-id"), headers
        assert len(body) <= MAX_ERROR_BYTES
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and detail
        if request_.closes:
            return
        assert not will_close, "the server closed a connection it could keep"
        socket_before = connection.sock
        status, headers, body, _ = send(connection, valid_png_request())
        assert connection.sock is socket_before  # no silent reconnect by http.client
        assert status == 200, body[:300]
        assert json.loads(body)["results"][0]["index"] == 0
    finally:
        connection.close()
