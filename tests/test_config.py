"""Settings: every key from the environment, clear errors naming the key, secrets hidden."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.service.logs import RedactSecrets

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
README = ENV_EXAMPLE.parent / "README.md"


def test_every_setting_is_documented_in_env_example() -> None:
    keys = {line.split("=", 1)[0].lstrip("# ").strip()
            for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line}
    assert {name.upper() for name in Settings.model_fields} <= keys


def test_every_setting_is_set_once_in_env_example() -> None:
    # A key set twice in .env means the first value is silently overridden by the second.
    keys = [line.split("=", 1)[0].strip() for line in ENV_EXAMPLE.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")]
    assert sorted(k for k in set(keys) if keys.count(k) > 1) == []


def test_every_setting_is_in_the_readme_settings_table() -> None:
    rows = {line.split("|")[1].strip().strip("`") for line in
            README.read_text(encoding="utf-8").splitlines() if line.startswith("| `")}
    assert sorted(name.upper() for name in Settings.model_fields
                  if name.upper() not in rows) == []


def test_defaults_match_the_model_card(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert (defaults.max_new_tokens, defaults.temperature, defaults.repetition_penalty,
            defaults.context_tokens, defaults.quantization) == (128, 0.7, 1.1, 2048, "auto")


def test_environment_and_dotenv_are_read(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_NEW_TOKENS=64\nDISCORD_TOKEN=\n")
    monkeypatch.setenv("TEMPERATURE", "0.9")
    loaded = load_settings()
    assert loaded.max_new_tokens == 64 and loaded.temperature == 0.9
    assert loaded.discord_token is None  # an empty value means "not set"


@pytest.mark.parametrize(("key", "value"), [
    ("MAX_NEW_TOKENS", "many"), ("QUANTIZATION", "3bit"), ("DEVICE", "tpu"),
    ("SLACK_PORT", "70000"), ("CONTEXT_TOKENS", "4096"), ("METRICS_PORT", "0"),
])
def test_invalid_values_name_the_key(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                     key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_slack_needs_a_mode(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        load_settings()


def test_secrets_never_print(settings: Settings) -> None:
    loaded = load_settings(discord_token="super.secret.token", slack_bot_token="xoxb-secret",
                           slack_signing_secret="5ec7e75ec7e75ec7e75ec7e75ec7e75e")
    for shown in (repr(loaded), str(loaded), repr(loaded.discord_token), loaded.model_dump_json()):
        assert "super.secret.token" not in shown and "xoxb-secret" not in shown
        assert "5ec7e75ec7e75ec7e75ec7e75ec7e75e" not in shown


def test_log_filter_redacts_secrets() -> None:
    import logging

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token=%s", ("xoxb-abc123",), None)
    RedactSecrets(["xoxb-abc123"]).filter(record)
    assert record.getMessage() == "token=***"


def test_a_password_given_as_a_url_query_parameter_is_redacted_from_logs() -> None:
    """libpq also takes the password as `?password=`: neither its written nor its decoded
    form reaches a log record, though a library's error might print either alone."""
    import logging

    settings = load_settings(
        database_url="postgresql://rinna@db:5432/rinna?sslmode=require&password=pa%2Bss-4111")
    shown = []
    for text in ("auth failed: pa+ss-4111", "dsn had password=pa%2Bss-4111 in it"):
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, text, None, None)
        RedactSecrets(settings.secret_values()).filter(record)
        shown.append(record.getMessage())
    assert shown == ["auth failed: ***", "dsn had password=*** in it"]


def test_the_reply_must_leave_room_for_a_prompt(settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_TOKENS", "100")
    monkeypatch.setenv("MAX_NEW_TOKENS", "128")
    with pytest.raises(ConfigError, match="CONTEXT_TOKENS.*MAX_NEW_TOKENS"):
        load_settings()


def test_a_misspelt_key_in_dotenv_is_reported_with_the_nearest(
        settings: Settings, tmp_path: Path) -> None:
    from bot.config import unknown_keys

    (tmp_path / ".env").write_text("DISCORD_TOKN=abc\nMAX_NEW_TOKENS=64\nCOMPLETELY_OTHER=1\n")
    lines = unknown_keys()
    assert len(lines) == 2
    assert "DISCORD_TOKN" in lines[0] and "did you mean DISCORD_TOKEN?" in lines[0]
    assert "COMPLETELY_OTHER" in lines[1] and "did you mean" not in lines[1]
    assert "abc" not in "".join(lines)  # values (secrets) are never repeated


def test_the_command_reports_the_typo_at_start(settings: Settings, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from bot.service import cli

    (tmp_path / ".env").write_text("DISCORD_TOKN=abc\n")

    async def no_serve(*_: object) -> int:
        return 0  # serve() returns the exit status (the terminal chat's 0 or 130)

    monkeypatch.setattr(cli, "serve", no_serve)
    names = ["", "discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx", "websockets",
             "bitsandbytes.backends.cpu.ops"]
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    handlers = logging.getLogger().handlers[:]
    try:
        assert cli.main(["chat"]) == 0
    finally:
        logging.getLogger().handlers[:] = handlers
        for logger, level in saved:
            logger.setLevel(level)
    err = capsys.readouterr().err
    assert "unknown setting DISCORD_TOKN" in err and "did you mean DISCORD_TOKEN?" in err


@pytest.mark.parametrize("value", ["debug", "Warning", " info "])
def test_log_level_is_case_insensitive(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                       value: str) -> None:
    monkeypatch.setenv("LOG_LEVEL", value)
    assert load_settings().log_level == value.strip().upper()


# Environment variables the guides name that are not settings of ours (other tools' own).
OUTSIDE_VARIABLES = {"APPLICATION_ID", "DEBIAN_FRONTEND", "HF_HOME", "HF_HUB_OFFLINE",
                     "HF_ENDPOINT", "TRANSFORMERS_OFFLINE", "PIP_NO_CACHE_DIR",
                     "PIP_DISABLE_PIP_VERSION_CHECK", "PYTEST_ARGS", "SLACK_CLIENT_ID",
                     "SLACK_CLIENT_SECRET", "XDG_STATE_HOME",
                     # llama.cpp's quantisation types and build option (docs/llamacpp.md)
                     "Q4_K_M", "Q8_0", "GGML_NATIVE", "DGGML_NATIVE",
                     # the postgres image's own (compose.yaml, docs/operations.md)
                     "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}


def test_every_key_the_guides_name_is_a_setting() -> None:
    # A documented key that Settings lacks is "unknown setting ... (ignored)" when set.
    root = ENV_EXAMPLE.parent
    guides = [root / n for n in ("README.md", "compose.yaml", "Dockerfile", ".env.example")]
    known = {name.upper() for name in Settings.model_fields} | OUTSIDE_VARIABLES
    named = {(key, path.name) for path in [*guides, *sorted((root / "docs").glob("*.md"))]
             for key in re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b",
                                   path.read_text(encoding="utf-8"))}
    assert sorted((key, where) for key, where in named if key not in known) == []


def test_every_secret_setting_is_listed_for_redaction(settings: Settings) -> None:
    secret = settings.model_copy(update={
        name: SecretStr(f"value-of-{name}") for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)})
    assert set(secret.secret_fields) >= {"discord_token", "slack_bot_token", "slack_app_token",
                                         "slack_signing_secret", "engine_api_key"}
    assert sorted(secret.secret_values()) == sorted(f"value-of-{n}" for n in secret.secret_fields)
    assert settings.secret_values() == []  # unset secrets are not "redact the empty string"


def test_the_command_redacts_the_engine_api_key(settings: Settings, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from bot.service import cli

    key = "vllm-key-0123456789"
    (tmp_path / ".env").write_text(f"ENGINE_URL=http://127.0.0.1:9/v1\nENGINE_API_KEY={key}\n")

    async def logs_the_key(*_: object) -> int:
        logging.getLogger("aiohttp.client").error("request failed: Authorization=%s", key)
        return 0

    monkeypatch.setattr(cli, "serve", logs_the_key)
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level
    try:
        assert cli.main(["chat"]) == 0
    finally:
        logging.getLogger().handlers[:] = handlers
        logging.getLogger().setLevel(level)
    err = capsys.readouterr().err
    assert "request failed: Authorization=***" in err and key not in err


@pytest.mark.parametrize(("key", "value"), [
    ("DISCORD_TOKEN", "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abc-def_ghi"),
    ("SLACK_BOT_TOKEN", "xoxb-1234-5678-abcd"),
    ("SLACK_BOT_TOKEN", "xoxe.xoxb-1-abcd"),  # a rotating token
    ("SLACK_APP_TOKEN", "xapp-1-A0123-456-abc"),
    ("SLACK_SIGNING_SECRET", "8f742231b10e8888ABCD99aaabbb85a5"),
])
def test_tokens_of_the_right_shape_are_taken(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                             key: str, value: str) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1")
    monkeypatch.setenv(key, f" {value} ")  # pasted with spaces around
    assert getattr(load_settings(), key.lower()).get_secret_value() == value


@pytest.mark.parametrize(("key", "value", "said"), [
    ("DISCORD_TOKEN", "not-a-token", "is not a Discord bot token (three parts separated by dots"),
    ("DISCORD_TOKEN", "Bot a.b.c", "is not a Discord bot token"),
    ("SLACK_BOT_TOKEN", "hello", "is not a Slack bot token (it starts with xoxb-"),
    ("SLACK_BOT_TOKEN", "xoxp-1-user-token", "is not a Slack bot token"),
    ("SLACK_APP_TOKEN", "xoxb-1", "is not a Slack app-level token (it starts with xapp-"),
    ("SLACK_SIGNING_SECRET", "sign-secret", "is not a Slack signing secret (32 hex digits"),
])
def test_a_token_of_the_wrong_shape_is_one_plain_line(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, key: str, value: str,
        said: str) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1")
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"{key} {said}") and f"(for example {key}=" in line
    assert value not in line  # a secret, even a wrong one, is not repeated


@pytest.mark.parametrize("env", [
    {"DEVICE": "gpu"}, {"QUANTIZATION": "16bit"}, {"MAX_NEW_TOKENS": "many"},
    {"TEMPERATURE": "0"}, {"ALLOW_DMS": "perhaps"}, {"LOG_LEVEL": "loud"},
    {"METRICS_PORT": "0"}, {"CONTEXT_TOKENS": "100"}, {"ENGINE_URL": "ftp://x"},
    {"SLACK_BOT_TOKEN": "xoxb-123"}, {"SLACK_APP_TOKEN": "xapp-1"},
    {"SLACK_SIGNING_SECRET": "8f742231b10e8888abcd99aaabbb85a5"},
])
def test_every_settings_error_names_the_setting_and_a_right_value(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    (line,) = str(raised.value).splitlines()
    (key,) = env
    assert line.startswith(key), line
    assert re.search(r"(for example|e\.g\.) [A-Z_]+=\S", line), line
    for prose in ("Value error", "String should", "Input should", "validation error",
                  "pattern", "invalid settings"):
        assert prose not in line, line


def test_slack_app_token_without_the_bot_token_says_what_is_missing(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-A0123-456-abc")
    with pytest.raises(ConfigError, match="^SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is "
                                          "missing: set it to the app's Bot User OAuth Token"):
        load_settings()
