"""Settings: built once at start, the only reader of the environment (and `.env`)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.access import parse_ids
from bot.errors import ConfigError

Ids = Annotated[frozenset[str], NoDecode]  # comma-separated in the environment

DEFAULT_MODEL_ID = "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
MIN_PROMPT_TOKENS = 64  # CONTEXT_TOKENS - MAX_NEW_TOKENS must leave at least this for the prompt


class Settings(BaseSettings):
    """Every field is its environment key in lower case (MODEL_ID -> model_id)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Model and generation
    model_id: str = DEFAULT_MODEL_ID
    model_revision: str = "main"  # hub branch, tag or commit of MODEL_ID (pin a commit hash)
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")  # auto, cpu, cuda, cuda:N
    max_new_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.7, gt=0.0, le=5.0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=5.0)
    context_tokens: int = Field(2048, ge=64, le=2048)

    # Shared generator: batching, queue and limits
    max_batch: int = Field(8, ge=1, le=256)
    kv_cache_gb: float = Field(6.0, gt=0.0)
    queue_size: int = Field(64, ge=1)
    max_per_user: int = Field(2, ge=1)  # one user's requests running or waiting at once
    request_timeout_s: float = Field(180.0, gt=0.0)

    # Remote engine: OpenAI-compatible servers (vLLM); unset ENGINE_URL = the local model
    engine_url: str | None = None  # comma-separated base URLs, e.g. http://vllm:8000/v1
    engine_api_key: SecretStr | None = None
    engine_model: str | None = None  # the served model name; unset: MODEL_ID
    engine_concurrency: int = Field(64, ge=1)  # requests in flight per URL
    engine_kind: Literal["auto", "vllm", "llamacpp"] = "auto"  # auto: asks each server

    # Storage
    database_path: Path = Path("data/rinna-bot.sqlite3")
    retention_days: int | None = Field(None, ge=1)  # None: keep every turn

    # Platforms
    discord_token: SecretStr | None = None
    discord_message_content: bool = True  # the privileged intent; False: mentions and DMs only
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_port: int = Field(3000, ge=1, le=65535)
    slack_api_url: str = "https://slack.com/api/"

    # Access (comma-separated ids; empty = no restriction): see bot/access.py
    allowed_workspaces: Ids = frozenset()
    allowed_channels: Ids = frozenset()
    allowed_users: Ids = frozenset()
    allowed_roles: Ids = frozenset()
    blocked_users: Ids = frozenset()
    allow_dms: bool = True

    # Service: stopping and starting again without losing a message
    shutdown_grace_s: float = Field(20.0, ge=0.0)  # answers in flight may finish this long
    recover_max_age_s: float = Field(900.0, ge=0.0)  # older unanswered messages get a notice

    # Behaviour and logs
    stream_interval_s: float = Field(1.0, ge=0.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Service: Prometheus metrics and the health check (unset port = off)
    metrics_port: int | None = Field(None, ge=1, le=65535)  # 0 would pick a random port no health check finds
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # `KEY=` in .env or the environment means "not set", not "empty string".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and v.strip() == "")}
        return data

    @field_validator("allowed_workspaces", "allowed_channels", "allowed_users", "allowed_roles",
                     "blocked_users", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> frozenset[str]:
        return parse_ids(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _slack_mode_complete(self) -> Settings:
        if self.slack_bot_token and not self.slack_app_token and not self.slack_signing_secret:
            raise ValueError(
                "SLACK_BOT_TOKEN is set: also set SLACK_APP_TOKEN (Socket Mode) "
                "or SLACK_SIGNING_SECRET (HTTP mode)"
            )
        return self

    @model_validator(mode="after")
    def _room_for_a_prompt(self) -> Settings:
        if self.context_tokens - self.max_new_tokens < MIN_PROMPT_TOKENS:
            raise ValueError(
                f"CONTEXT_TOKENS ({self.context_tokens}) must exceed MAX_NEW_TOKENS "
                f"({self.max_new_tokens}) by at least {MIN_PROMPT_TOKENS} tokens for the prompt"
            )
        return self

    @model_validator(mode="after")
    def _engine_urls_valid(self) -> Settings:
        if self.engine_url is not None:
            for url in self.engine_urls:
                parsed = urlsplit(url)
                if parsed.scheme not in ("http", "https") or not parsed.hostname:
                    raise ValueError(f"ENGINE_URL: {url!r} is not an http(s) URL")
            if not self.engine_urls:
                raise ValueError("ENGINE_URL: no URL given")
        return self

    @property
    def engine_urls(self) -> tuple[str, ...]:
        """ENGINE_URL split at commas; empty: the local model."""
        if self.engine_url is None:
            return ()
        return tuple(u.strip() for u in self.engine_url.split(",") if u.strip())

    @property
    def secret_fields(self) -> tuple[str, ...]:
        """Every secret setting's field name (each SecretStr field), set or not."""
        return tuple(name for name, field in type(self).model_fields.items()
                     if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ())))

    def secret_values(self) -> list[str]:
        """The values of every secret that is set: what logs must never show."""
        return [value.get_secret_value() for name in self.secret_fields
                if isinstance(value := getattr(self, name), SecretStr)]

    @property
    def discord_enabled(self) -> bool:
        return self.discord_token is not None

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None

    @property
    def prompt_budget(self) -> int:
        """Tokens the prompt may take: the context less the room kept for the reply."""
        return self.context_tokens - self.max_new_tokens


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one ConfigError naming each key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def unknown_keys(env_file: str | Path | None = None) -> list[str]:
    """One line per key in `.env` that is no setting (a typo is otherwise silently ignored),
    naming the nearest known key where there is one."""
    path = Path(env_file if env_file is not None else Settings.model_config.get("env_file")
                or ".env")
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    known = sorted(name.upper() for name in Settings.model_fields)
    lines = []
    for key in dotenv_values(path, encoding="utf-8"):
        if key.upper() in known:
            continue
        near = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        lines.append(f"{path}: unknown setting {key} (ignored){hint}")
    return lines
