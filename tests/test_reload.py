"""Reloading the checkpoint in place (what SIGHUP triggers): under concurrent requests every
reply comes whole from one model or the other; a failed load keeps the old one serving."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.lifecycle import Lifecycle

CLIENTS = 4


@pytest.fixture
def swappable_model(tiny_model_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, path)
    return path


def replace_checkpoint(path: Path, new: Path) -> None:
    staged = path.with_suffix(".new")
    shutil.copy(new, staged)
    staged.replace(path)


def reload(client: TestClient, app: FastAPI) -> Any:
    lifecycle: Lifecycle = app.state.lifecycle
    return client.portal.call(lifecycle.reload)  # type: ignore[union-attr]


def score(client: TestClient, png: bytes) -> tuple[str, float]:
    reply = client.post("/anomaly-score", files={"files": ("d.png", png)})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return body["model_id"], body["results"][0]["score"]


def test_reload_under_concurrent_requests_answers_each_from_one_model(
    make_app: Callable[..., FastAPI],
    swappable_model: Path,
    second_model_path: Path,
    stroke_png: bytes,
) -> None:
    app = make_app(model_path=swappable_model)
    with TestClient(app) as client:
        old_id, old_score = score(client, stroke_png)
        replies: list[tuple[str, float]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def post_until_stopped() -> None:
            try:
                while not stop.is_set():
                    replies.append(score(client, stroke_png))
            except BaseException as exc:  # collected: an assert in a thread is lost
                failures.append(exc)

        threads = [threading.Thread(target=post_until_stopped) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        replace_checkpoint(swappable_model, second_model_path)
        engine = reload(client, app)
        after_swap = len(replies)
        while len(replies) < after_swap + 20 and not failures:
            threading.Event().wait(0.01)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        new_id, new_score = score(client, stroke_png)
        card = client.get("/model").json()
    assert failures == []
    assert engine is not None and engine.model_id == new_id != old_id
    assert card["model_id"] == new_id
    expected = {old_id: old_score, new_id: new_score}
    assert {model_id for model_id, _ in replies} == {old_id, new_id}
    for model_id, value in replies:
        assert value == pytest.approx(expected[model_id], rel=1e-5)


def test_failed_reload_logs_why_and_keeps_the_old_model(
    make_app: Callable[..., FastAPI],
    swappable_model: Path,
    stroke_png: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(model_path=swappable_model)
    with TestClient(app) as client:
        old_id, old_score = score(client, stroke_png)
        swappable_model.write_bytes(b"not a checkpoint")
        with caplog.at_level(logging.ERROR, logger="app.lifecycle"):
            assert reload(client, app) is None
        assert score(client, stroke_png) == (old_id, old_score)
        assert client.get("/readyz").json()["model_id"] == old_id
    assert any(
        "reload from" in record.getMessage() and f"still serving {old_id}" in record.getMessage()
        for record in caplog.records
    )


def test_readyz_answers_503_while_draining_and_replies_close_the_connection(
    client: TestClient,
) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").headers.get("connection") != "close"
    lifecycle: Lifecycle = client.app.state.lifecycle  # type: ignore[attr-defined]
    lifecycle.start_draining()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
    served = client.get("/healthz")  # still served, but clients should reconnect elsewhere
    assert served.status_code == 200
    assert served.headers["connection"] == "close"
