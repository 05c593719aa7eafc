"""Settings for the judge and the embedder, and one vector index per embedder."""

from __future__ import annotations

import pytest

from learnloop.api.memory_log import COLLECTION, collection_for
from learnloop.embeddings import make_embedder
from learnloop.errors import ConfigError
from learnloop.settings import load_settings
from processors.embedding import HashingEmbedder
from processors.judging import JudgeConfig

LLM = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


def test_defaults_are_offline_and_the_judge_is_off() -> None:
    settings = load_settings()
    assert settings.embedder.kind == "hashing"
    assert isinstance(make_embedder(settings.embedder), HashingEmbedder)
    assert settings.judge.sample_rate == 0 and settings.judge_enabled is False
    assert JudgeConfig().enabled is False
    assert load_settings(llm=LLM).judge_enabled is False  # an LLM alone does not judge


def test_judge_settings_are_checked() -> None:
    assert load_settings(llm=LLM, judge={"sample_rate": 0.1}).judge_enabled is True
    with pytest.raises(ConfigError, match="needs the llm settings"):
        load_settings(judge={"sample_rate": 0.1})
    with pytest.raises(ConfigError, match="shorter than interaction_retention_s"):
        load_settings(llm=LLM, judge={"sample_rate": 0.1, "after_s": 10}, interaction_retention_s=5)
    with pytest.raises(ConfigError, match=r"judge\.sample_rate"):
        load_settings(llm=LLM, judge={"sample_rate": 1.5})


def test_embedder_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNLOOP_EMBEDDER__KIND", "openai")
    with pytest.raises(ConfigError, match="base_url and model"):
        load_settings()
    monkeypatch.setenv("LEARNLOOP_EMBEDDER__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("LEARNLOOP_EMBEDDER__MODEL", "text-embedding-3-small")
    settings = load_settings()
    assert (settings.embedder.kind, settings.embedder.model) == ("openai", "text-embedding-3-small")


def test_each_embedder_has_its_own_index() -> None:
    assert collection_for(HashingEmbedder().name) == COLLECTION  # the historical name
    names = {
        collection_for(n)
        for n in ("hashing-v1-384", "hashing-v1-256", "st:model", "openai:text-embedding-3-small")
    }
    assert len(names) == 4
    for name in names - {COLLECTION}:
        assert name.startswith(f"{COLLECTION}-") and len(name) <= 63
