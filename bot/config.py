"""Settings: built once at start, the only reader of the environment (and `.env`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_MODEL_ID = "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
MIN_PROMPT_TOKENS = 64  # CONTEXT_TOKENS - MAX_NEW_TOKENS must leave at least this for the prompt


class Settings(BaseSettings):
    """Every field is its environment key in lower case (MODEL_ID -> model_id)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Model and generation
    model_id: str = DEFAULT_MODEL_ID
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    max_new_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.7, gt=0.0, le=5.0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=5.0)
    context_tokens: int = Field(2048, ge=64, le=2048)

    # Shared generator: batching, queue and limits
    max_batch: int = Field(8, ge=1, le=256)
    kv_cache_gb: float = Field(6.0, gt=0.0)
    queue_size: int = Field(64, ge=1)
    request_timeout_s: float = Field(180.0, gt=0.0)

    # Storage
    database_path: Path = Path("data/rinna-bot.sqlite3")

    # Platforms
    discord_token: SecretStr | None = None
    discord_message_content: bool = True  # the privileged intent; False: mentions and DMs only
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_port: int = Field(3000, ge=1, le=65535)
    slack_api_url: str = "https://slack.com/api/"

    # Service: stopping and starting again without losing a message
    shutdown_grace_s: float = Field(20.0, ge=0.0)  # answers in flight may finish this long
    recover_max_age_s: float = Field(900.0, ge=0.0)  # older unanswered messages get a notice

    # Behaviour and logs
    stream_interval_s: float = Field(1.0, ge=0.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # `KEY=` in .env or the environment means "not set", not "empty string".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and v.strip() == "")}
        return data

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
