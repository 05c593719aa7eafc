"""A setting that fails validation is named with its value, unless the value is a secret."""

from __future__ import annotations

import json

import pytest

from learnloop.errors import ConfigError
from learnloop.settings import load_settings

SHORT_KEY = "hunter2-prodkey"  # 15 characters: one too few


def _error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **overrides: object) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def test_a_too_short_api_key_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = json.dumps({"ops": {"key": SHORT_KEY, "scopes": ["read"]}})
    message = _error(monkeypatch, {"LEARNLOOP_API_KEYS": keys})
    assert SHORT_KEY not in message
    assert "invalid setting api_keys.ops.key = '***' (15 characters)" in message
    assert "(LEARNLOOP_API_KEYS__OPS__KEY)" in message
    assert "at least 16 characters" in message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"api_keys": {"ops": SHORT_KEY}}, "api_keys.ops"),  # a model that holds a secret
        ({"api_keys": {"ops": {"key": 1234567}}}, "api_keys.ops.key"),
        ({"llm": {"base_url": "http://x/v1", "model": "m", "api_key": 123456}}, "llm.api_key"),
        ({"qdrant_api_key": ["hunter2-prodkey"]}, "qdrant_api_key"),
        ({"api_keys": {"ops": {"key": "x" * 20, "secret_token": SHORT_KEY}}}, "secret_token"),
    ],
)
def test_secrets_are_masked_wherever_they_sit(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object], key: str
) -> None:
    message = _error(monkeypatch, {}, **overrides)
    assert key in message, message
    for secret in (SHORT_KEY, "1234567", "123456"):
        assert secret not in message, message
    assert "'***'" in message, message


def test_other_values_are_still_shown_without_url_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(monkeypatch, {"LEARNLOOP_PARTITIONS": "0"})
    assert "invalid setting partitions = '0' (LEARNLOOP_PARTITIONS)" in message
    message = _error(monkeypatch, {}, qdrant_url=["http://qd-user:qd-pass@qdrant:6333/?k=v"])
    assert "invalid setting qdrant_url = " in message and "qdrant:6333" in message, message
    assert "qd-user" not in message and "qd-pass" not in message, message


def test_a_variable_with_broken_json_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings raises its own SettingsError for JSON it cannot parse: it must
    become a ConfigError (one line at start-up, no traceback), without the value."""
    message = _error(monkeypatch, {"LEARNLOOP_API_KEYS": '{"ops": {"key": "' + SHORT_KEY})
    assert 'field "api_keys"' in message and "valid JSON" in message
    assert SHORT_KEY not in message
