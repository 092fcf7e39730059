"""Settings: built once at start, the only reader of the environment (and `.env`)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot import models, precision
from bot.errors import ConfigError
from bot.setting_texts import EXAMPLES, PROBLEMS, TOKEN_SHAPES
from bot.setting_values import COMMUNITY_KEYS, parse_ids, url_passwords

Ids = Annotated[frozenset[str], NoDecode]  # comma-separated in the environment
ShardIds = Annotated[tuple[int, ...], NoDecode]  # comma-separated numbers, in order

MIN_PROMPT_TOKENS = 64  # CONTEXT_TOKENS - MAX_NEW_TOKENS must leave at least this for the prompt


class Settings(BaseSettings):
    """Every field is its environment key in lower case (MODEL_ID -> model_id)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Model and generation (bot/models.py: the alias table; bot/precision.py: the value set)
    model: Literal["ppo", "ppo-4bit"] | None = None  # an alias; MODEL_ID wins when both are set
    model_id: str = ""  # hub id or local folder; unset: MODEL's, or the default (bot/models.py)
    model_revision: str = "main"  # hub branch, tag or commit of MODEL_ID (pin a commit hash)
    quantization: str = "auto"  # auto|nf4|int8|fp16|bf16|fp32, or the older 4bit, 8bit, none
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")  # auto, cpu, cuda, cuda:N
    max_new_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.7, gt=0.0, le=5.0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=5.0)
    context_tokens: int = Field(2048, ge=64, le=2048)
    # A conversation longer than the window: its rolling summary (bot/core/summary.py)
    summary: bool = True  # SUMMARY=off: the oldest turns are only left out (and said so)
    summary_tokens: int = Field(200, ge=16, le=512)  # a summary's longest length
    summary_channel_messages: int = Field(100, ge=1, le=1000)  # 「要約」 outside a thread

    # Shared generator: batching, queue and limits
    max_batch: int = Field(8, ge=1, le=256)
    kv_cache_gb: float = Field(6.0, gt=0.0)
    cuda_graphs: bool = True  # decode steps replayed as CUDA graphs; false: eager (enforce_eager)
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
    # PostgreSQL instead of SQLite (several replicas): postgresql://user:password@host/db
    database_url: SecretStr | None = None
    database_pool_size: int = Field(10, ge=1, le=1000)  # connections per replica
    retention_days: int | None = Field(None, ge=1)  # None: keep every turn

    # Platforms
    discord_token: SecretStr | None = None
    discord_message_content: bool = True  # the privileged intent; False: mentions and DMs only
    # Sharding (several gateway connections; DMs arrive on shard 0 only): unset = one gateway.
    # DISCORD_SHARD_IDS: this replica's shards (comma-separated); unset = all of them.
    discord_shard_count: int | None = Field(None, ge=1, le=10000)
    discord_shard_ids: ShardIds = ()
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_port: int = Field(3000, ge=1, le=65535)
    slack_api_url: str = "https://slack.com/api/"

    # What people bring: attached files (bot/core/attachments.py) and edited questions
    attachment_max_bytes: int = Field(1_000_000, ge=1, le=100_000_000)  # per file
    attachments_max: int = Field(5, ge=0, le=20)  # files read per message (0: none)
    attachment_timeout_s: float = Field(20.0, gt=0.0, le=300.0)  # per file's download
    edit_window_s: float = Field(600.0, ge=0.0)  # an edited newest question is answered again

    # Access (comma-separated ids; empty = no restriction): see bot/core/access.py
    allowed_workspaces: Ids = frozenset()
    allowed_channels: Ids = frozenset()
    allowed_users: Ids = frozenset()
    allowed_roles: Ids = frozenset()
    blocked_users: Ids = frozenset()
    allow_dms: bool = True

    # Communities (docs/personas.md): the host's defaults under every server, workspace,
    # channel and thread, the hard bounds on what their admins may set, and who else may
    persona: str = "none"  # a ready persona (helpful, concise, keigo, casual) or its own text
    mention_only: bool = False  # answer in a thread only when mentioned
    answer_buttons: bool = True  # 停止 / もう一度 / 👍👎 on answers
    community_keys: Ids = frozenset(COMMUNITY_KEYS)  # which keys communities may change; "none"
    max_persona_chars: int = Field(400, ge=1, le=4000)
    max_persona_tokens: int = Field(256, ge=8, le=1024)
    community_min_temperature: float = Field(0.1, gt=0.0, le=5.0)
    community_max_temperature: float = Field(1.5, gt=0.0, le=5.0)
    community_max_repetition_penalty: float = Field(2.0, ge=1.0, le=5.0)
    community_max_new_tokens: int = Field(512, ge=1, le=1024)
    admin_roles: Ids = frozenset()  # Discord role ids (never names) that may change settings
    admin_users: Ids = frozenset()  # user ids that may change settings wherever the bot is

    # Service: stopping and starting again without losing a message
    shutdown_grace_s: float = Field(20.0, ge=0.0)  # answers in flight may finish this long
    recover_max_age_s: float = Field(900.0, ge=0.0)  # older unanswered messages get a notice
    # Replicas on one PostgreSQL: how long an answer's lease lasts unrenewed (renewed every
    # third of it while its process lives); a dead process's answers are taken over after it
    lease_s: float = Field(30.0, ge=3.0, le=600.0)

    # Behaviour and logs
    stream_interval_s: float = Field(1.0, ge=0.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Where `chat` and `demo` write their log (the terminal shows answers only); "off": nowhere.
    # Unset: $XDG_STATE_HOME/rinna-bot/rinna-bot.log (~/.local/state/rinna-bot/rinna-bot.log).
    log_file: str | None = None

    # Service: Prometheus metrics and the health check (unset port = off)
    # 0 would pick a random port that no health check finds
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    _model_reason: tuple[str, str] = PrivateAttr(("", ""))  # (model_id, why it was chosen)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # `KEY=` in .env or the environment means "not set", not "empty string".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and v.strip() == "")}
        return data

    @field_validator("allowed_workspaces", "allowed_channels", "allowed_users", "allowed_roles",
                     "blocked_users", "admin_roles", "admin_users", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> frozenset[str]:
        return parse_ids(value)

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shard_id_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ValueError("must be shard numbers separated by commas")
        return tuple(sorted({int(part) for part in parts}))

    @model_validator(mode="after")
    def _shards_in_range(self) -> Settings:
        if self.discord_shard_ids and self.discord_shard_count is None:
            raise ValueError("DISCORD_SHARD_IDS is set but DISCORD_SHARD_COUNT is not: set it to "
                             "the bot's total number of shards (for example "
                             "DISCORD_SHARD_COUNT=2)")
        count = self.discord_shard_count
        outside = [i for i in self.discord_shard_ids if count is not None and i >= count]
        if outside:
            raise ValueError(f"DISCORD_SHARD_IDS: shard {outside[0]} does not exist with "
                             f"DISCORD_SHARD_COUNT={count} (shards are numbered 0 to "
                             f"{(count or 1) - 1})")
        return self

    @field_validator("community_keys", mode="before")
    @classmethod
    def _community_keys(cls, value: Any) -> frozenset[str]:
        if isinstance(value, str) and value.strip().lower() == "none":
            return frozenset()
        keys = parse_ids(value)
        unknown = sorted(keys - set(COMMUNITY_KEYS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a community setting (the settings are "
                             f"{', '.join(COMMUNITY_KEYS)}, or none)")
        return keys

    @field_validator("quantization", mode="before")
    @classmethod
    def _precision_value(cls, value: Any) -> Any:
        return precision.normalise(value) if isinstance(value, str) else value

    @field_validator("model", mode="before")
    @classmethod
    def _model_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() not in models.ALIASES:
            raise ValueError(f"{value!r} is not one of {', '.join(models.ALIASES)} "
                             "(or set MODEL_ID to any hub id or local folder)")
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _choose_model(self) -> Settings:
        repo, why = models.resolve(self.model, self.model_id or None,
                                   models.hub_cache_dir(os.environ), remote=bool(self.engine_url))
        object.__setattr__(self, "model_id", repo)  # frozen: set once, here, while building
        self._model_reason = (repo, why)
        return self

    @property
    def model_reason(self) -> str:
        """Why MODEL_ID is this repository (MODEL_ID, MODEL=..., or the default and why)."""
        repo, why = self._model_reason
        return why if repo == self.model_id else "MODEL_ID"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("discord_token", "slack_bot_token", "slack_app_token",
                     "slack_signing_secret")
    @classmethod
    def _token_shape(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        # Caught here, a pasted wrong value costs a second, not a model load.
        if value is not None:
            shape, what = TOKEN_SHAPES[info.field_name]
            if not shape.fullmatch(value.get_secret_value().strip()):
                raise ValueError(what)
            return SecretStr(value.get_secret_value().strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            url = value.get_secret_value().strip()
            if not url.startswith(("postgresql://", "postgres://")):
                raise ValueError("must be a PostgreSQL URL, e.g. DATABASE_URL=postgresql://"
                                 "rinna:password@db:5432/rinna (unset: SQLite, DATABASE_PATH)")
            return SecretStr(url)
        return value

    @model_validator(mode="after")
    def _slack_mode_complete(self) -> Settings:
        if self.slack_bot_token and not self.slack_app_token and not self.slack_signing_secret:
            raise ValueError(
                "SLACK_BOT_TOKEN is set but no mode: also set SLACK_APP_TOKEN (Socket Mode, "
                "e.g. SLACK_APP_TOKEN=xapp-1-A0123-456-abc) or SLACK_SIGNING_SECRET (HTTP mode)"
            )
        for name in ("slack_app_token", "slack_signing_secret"):
            if getattr(self, name) is not None and self.slack_bot_token is None:
                raise ValueError(
                    f"{name.upper()} is set but SLACK_BOT_TOKEN is missing: set it to the app's "
                    "Bot User OAuth Token (e.g. SLACK_BOT_TOKEN=xoxb-1234-5678-abcd)")
        return self

    @model_validator(mode="after")
    def _room_for_a_prompt(self) -> Settings:
        if self.context_tokens - self.max_new_tokens < MIN_PROMPT_TOKENS:
            raise ValueError(
                f"CONTEXT_TOKENS ({self.context_tokens}) must exceed MAX_NEW_TOKENS "
                f"({self.max_new_tokens}) by at least {MIN_PROMPT_TOKENS} tokens for the prompt "
                "(for example CONTEXT_TOKENS=2048 with MAX_NEW_TOKENS=128)"
            )
        return self

    @model_validator(mode="after")
    def _engine_urls_valid(self) -> Settings:
        if self.engine_url is not None:
            for url in self.engine_urls:
                parsed = urlsplit(url)
                if parsed.scheme not in ("http", "https") or not parsed.hostname:
                    raise ValueError(f"ENGINE_URL: {url!r} is not an http(s) URL (for "
                                     "example ENGINE_URL=http://vllm:8000/v1)")
            if not self.engine_urls:
                raise ValueError("ENGINE_URL: no URL given (for example "
                                 "ENGINE_URL=http://vllm:8000/v1)")
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
        values = [value.get_secret_value() for name in self.secret_fields
                  if isinstance(value := getattr(self, name), SecretStr)]
        if self.database_url is not None:  # its password alone, as an error might show it
            values += url_passwords(self.database_url.get_secret_value())
        return values

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
    """Build Settings; validation errors become one ConfigError with one plain line per
    problem (see `plain_error`)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(plain_error(err) for err in exc.errors())) from None


def plain_error(err: Any) -> str:
    """One line: the setting, what is wrong with it, and an example of a right value. Secret
    values are never repeated."""
    if not err["loc"]:  # a rule between settings: its message names them already
        return str(err.get("ctx", {}).get("error", err["msg"]))
    name = str(err["loc"][0])
    key = name.upper()
    field = Settings.model_fields.get(name)
    shown = not _is_secret(name) and isinstance(err.get("input"), str | int | float)
    given = f"={err['input']}" if shown else ""
    problem = _problem(err)
    if name == "device":
        problem = "must be auto, cpu, cuda or cuda:N (N: the GPU's number)"
    example = EXAMPLES.get(name)
    if example is None and field is not None and field.default not in (None, Ellipsis):
        example = str(field.default)
    joint = " " if not given and problem.startswith("is ") else ": "
    return f"{key}{given}{joint}{problem}" + (f" (for example {key}={example})" if example
                                              else "")


def _problem(err: Any) -> str:
    """What is wrong, in plain words (pydantic's own message where no wording is known)."""
    context = {k: v for k, v in err.get("ctx", {}).items()}
    try:
        return PROBLEMS.get(err["type"], "{msg}").format(msg=err["msg"], **{
            "error": "", **context})
    except (KeyError, IndexError):
        return str(err["msg"])


def _is_secret(name: str) -> bool:
    field = Settings.model_fields.get(name)
    return field is not None and SecretStr in (field.annotation,
                                               *getattr(field.annotation, "__args__", ()))


def default_log_file() -> Path:
    """The chat's log when LOG_FILE is unset: under the user's state directory (XDG)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rinna-bot" / "rinna-bot.log"


def log_level_from_environment() -> str | None:
    """LOG_LEVEL as given in the process environment (`LOG_LEVEL=INFO rinna-bot chat`), not
    from `.env`: only such a request brings log lines onto the chat's screen."""
    value = os.environ.get("LOG_LEVEL", "").strip().upper()
    return value or None


def unknown_keys(env_file: str | Path | None = None) -> list[str]:
    """One line per key in `.env` that is no setting (a typo is otherwise silently ignored),
    naming the nearest known key where there is one."""
    configured = Settings.model_config.get("env_file")
    path = Path(env_file if env_file is not None
                else configured if isinstance(configured, (str, Path)) else ".env")
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
