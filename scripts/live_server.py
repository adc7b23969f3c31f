"""A real uvicorn serving an app object on a free loopback port, in a background thread: for
the client and browser tests and scripts/screenshots.py, which need an app built in process
(settings such as a queue of one image, or the API key, without a subprocess and its start-up).
benchmarks/serve_load/servers.py starts `python -m app` as a process instead."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

START_TIMEOUT_S = 60.0  # model load and warm-up on a busy 2-core machine


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Yields the base URL once the lifespan has run (the model is loaded)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
