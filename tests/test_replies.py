"""Replies built on the hot path without pydantic models are still exactly what the schemas
say: the same bytes pydantic would write for the same values."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.schemas import AnomalyResponse
from tests.conftest import png_of


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """These tests only send requests and read the replies: one app for them all."""
    return module_client


@pytest.mark.parametrize(
    "params",
    [{}, {"threshold": "0.5"}, {"fpr": "0.2"}, {"score": "reconstruction"}, {"preprocess": "none"}],
)
def test_anomaly_reply_is_the_bytes_pydantic_writes(
    client: TestClient, mnist_sample: np.ndarray, params: dict[str, str]
) -> None:
    files = [("files", (f"{i}.png", png_of(mnist_sample[i]), "image/png")) for i in range(5)]
    response = client.post("/anomaly-score", files=files, params=params)
    assert response.status_code == 200, response.text
    parsed = AnomalyResponse.model_validate_json(response.content)
    assert parsed.model_dump_json().encode() == response.content
    assert [result.index for result in parsed.results] == list(range(5))
    assert all(result.is_anomaly == (result.score > parsed.threshold) for result in parsed.results)
