"""A bad VAE_* setting stops `python -m app` with one line naming the variable, the value and
what is allowed, and exit code 2: no pydantic traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import SecretStr, ValidationError

from app.config import Settings, describe_invalid_settings, env_name
from tests.conftest import PROJECT_ROOT

# Settings any text is valid for: nothing to get wrong.
FREE_TEXT = {"model_path", "host", "api_key"}


def invalid_value(annotation: Any) -> str:
    """An environment value the setting's type refuses."""
    if type(None) in get_args(annotation):  # `int | None`: the int
        annotation = next(member for member in get_args(annotation) if member is not type(None))
    if get_origin(annotation) is Literal:
        return "not-a-choice"
    if annotation is bool:
        return "maybe"
    if annotation in (int, float):
        return "abc"
    if get_origin(annotation) is list:
        return "[not json"
    raise AssertionError(f"no invalid value known for {annotation}")


def message_for(**environment: str) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(
            **{name.removeprefix("VAE_").lower(): value for name, value in environment.items()}
        )
    return describe_invalid_settings(caught.value)


@pytest.mark.parametrize("name", sorted(set(Settings.model_fields) - FREE_TEXT))
def test_every_setting_names_its_variable_and_the_bad_value(name: str) -> None:
    bad = invalid_value(Settings.model_fields[name].annotation)
    message = message_for(**{env_name(name): bad})
    assert message.startswith(f"{env_name(name)}={bad!r} is not valid")
    assert "; use " in message
    assert "\n" not in message


def test_free_text_settings_are_the_ones_that_take_any_text() -> None:
    for name in FREE_TEXT:
        assert Settings.model_fields[name].annotation in (str, Path, SecretStr | None)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"VAE_PORT": "abc"}, "VAE_PORT='abc' is not valid; use an integer from 1 to 65535"),
        ({"VAE_PORT": "0"}, "VAE_PORT='0' is not valid; use an integer from 1 to 65535"),
        ({"VAE_DEVICE": "gpu"}, "VAE_DEVICE='gpu' is not valid; use one of auto, cpu, cuda"),
        (
            {"VAE_LIMIT_CONCURRENCY": "0"},
            "VAE_LIMIT_CONCURRENCY='0' is not valid; use an integer of at least 1, "
            "or leave it unset",
        ),
        (
            {"VAE_BATCH_MAX_DELAY_MS": "-1"},
            "VAE_BATCH_MAX_DELAY_MS='-1' is not valid; use a number from 0.0 to 1000.0",
        ),
        ({"VAE_PUBLIC_DOCS": "maybe"}, "VAE_PUBLIC_DOCS='maybe' is not valid; use true or false"),
    ],
)
def test_the_message_says_what_is_allowed(environment: dict[str, str], expected: str) -> None:
    assert message_for(**environment) == expected


def test_a_validator_says_why_a_value_is_wrong() -> None:
    message = message_for(VAE_CORS_ORIGINS="https://app.example/")
    assert message.startswith("VAE_CORS_ORIGINS='https://app.example/' is not valid: ")
    assert "no trailing slash" in message


def test_several_bad_settings_share_one_line() -> None:
    message = message_for(VAE_PORT="abc", VAE_DEVICE="gpu")
    assert "VAE_PORT='abc'" in message and "VAE_DEVICE='gpu'" in message
    assert "\n" not in message


def test_an_api_key_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_key=12345)  # type: ignore[arg-type]
    assert "12345" not in describe_invalid_settings(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [("VAE_PORT", "abc", "an integer from 1 to 65535"), ("VAE_DEVICE", "gpu", "auto, cpu, cuda")],
)
def test_python_m_app_prints_one_line_and_exits_2(variable: str, value: str, allowed: str) -> None:
    environment = {key: text for key, text in os.environ.items() if not key.startswith("VAE_")}
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=PROJECT_ROOT,
        env={**environment, variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{variable}={value!r}" in lines[0] and allowed in lines[0]
