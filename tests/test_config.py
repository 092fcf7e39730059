"""Settings: every key from the environment, clear errors naming the key, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.logs import RedactSecrets

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_every_setting_is_documented_in_env_example() -> None:
    keys = {line.split("=", 1)[0].lstrip("# ").strip()
            for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line}
    assert {name.upper() for name in Settings.model_fields} <= keys


def test_defaults_match_the_model_card(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert (defaults.max_new_tokens, defaults.temperature, defaults.repetition_penalty,
            defaults.context_tokens, defaults.quantization) == (128, 0.7, 1.1, 2048, "4bit")


def test_environment_and_dotenv_are_read(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_NEW_TOKENS=64\nDISCORD_TOKEN=\n")
    monkeypatch.setenv("TEMPERATURE", "0.9")
    loaded = load_settings()
    assert loaded.max_new_tokens == 64 and loaded.temperature == 0.9
    assert loaded.discord_token is None  # an empty value means "not set"


@pytest.mark.parametrize(("key", "value"), [
    ("MAX_NEW_TOKENS", "many"), ("QUANTIZATION", "3bit"), ("DEVICE", "tpu"),
    ("SLACK_PORT", "70000"), ("CONTEXT_TOKENS", "4096"),
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
    loaded = load_settings(discord_token="super-secret-token", slack_bot_token="xoxb-secret",
                           slack_signing_secret="sign-secret")
    for shown in (repr(loaded), str(loaded), repr(loaded.discord_token), loaded.model_dump_json()):
        assert "super-secret-token" not in shown and "xoxb-secret" not in shown


def test_log_filter_redacts_secrets() -> None:
    import logging

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token=%s", ("xoxb-abc123",), None)
    RedactSecrets(["xoxb-abc123"]).filter(record)
    assert record.getMessage() == "token=***"


def test_the_reply_must_leave_room_for_a_prompt(settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXT_TOKENS", "100")
    monkeypatch.setenv("MAX_NEW_TOKENS", "128")
    with pytest.raises(ConfigError, match="CONTEXT_TOKENS.*MAX_NEW_TOKENS"):
        load_settings()
