"""Slow clients against a live `python -m app` with short read timeouts: trickled headers
and bodies are cut off (408 where a reply can still be sent), and the probes answer while
ordinary requests are at the concurrency limit."""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager

import httpx
import pytest

from tests.early_start import early_start
from tests.service_process import ServiceProcess, service_process

HEADER_TIMEOUT_S = "0.5"
BODY_TIMEOUT_S = "2"
SOCKET_TIMEOUT_S = 20.0  # a hang fails the test instead of blocking it


@early_start(scope="module")
def slow_client_service(request: pytest.FixtureRequest) -> AbstractContextManager[ServiceProcess]:
    return service_process(
        request.getfixturevalue("tiny_model_path"),
        request.getfixturevalue("tmp_path_factory").mktemp("timeouts"),
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        limit_concurrency="2",
        wait=False,
    )


def connect(service: ServiceProcess) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", service.port))
    connection.settimeout(SOCKET_TIMEOUT_S)
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def start_slow_upload(service: ServiceProcess) -> socket.socket:
    """Headers of a 1,000-byte upload and 10 bytes of its body, then nothing."""
    connection = connect(service)
    connection.sendall(
        b"POST /anomaly-score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"pixels":'
    )
    return connection


def test_trickled_headers_get_408_and_a_closed_connection(
    slow_client_service: ServiceProcess,
) -> None:
    with connect(slow_client_service) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # never finished
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"VAE_HEADER_TIMEOUT_S" in reply


def test_silent_connection_is_closed(slow_client_service: ServiceProcess) -> None:
    with connect(slow_client_service) as connection:
        assert read_until_closed(connection) == b""


def test_trickled_body_gets_408_and_a_closed_connection(
    slow_client_service: ServiceProcess,
) -> None:
    with start_slow_upload(slow_client_service) as connection:
        reply = read_until_closed(connection)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert b"VAE_BODY_TIMEOUT_S" in body


def test_probes_answer_while_requests_are_at_the_concurrency_limit(
    slow_client_service: ServiceProcess,
) -> None:
    url = slow_client_service.url
    slow = [start_slow_upload(slow_client_service) for _ in range(2)]
    try:
        # Once both slow uploads are in progress, ordinary requests are refused...
        refused = None
        for _ in range(200):
            refused = httpx.post(f"{url}/anomaly-score", json={"pixels": []}, timeout=10)
            if refused.status_code == 503:
                break
        assert refused is not None and refused.status_code == 503
        assert "VAE_LIMIT_CONCURRENCY" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        # ...and the probes and metrics are not.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    finally:
        for connection in slow:
            connection.close()
