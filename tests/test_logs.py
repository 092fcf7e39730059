"""Logs tell the truth without telling secrets: messages, exception text and tracebacks are
redacted (configured secrets, Slack and Discord tokens, Socket Mode ticket URLs)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from bot.service.logs import RedactSecrets, redact

BOT_TOKEN = "xoxb-1234567890-abcdefghijkl"
SIGNING = "8f14e45fceea167a5a36dedd4bea2543"
DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789"
TICKET_URL = "wss://wss-primary.slack.com/link/?ticket=0a1b2c3d-4e5f-6789&app_id=A1"


@pytest.fixture
def stream_logger() -> tuple[logging.Logger, io.StringIO]:
    """A logger whose handler is set up like setup_logging's (same filter, same format)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets([SIGNING]))
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, out
    logger.handlers.clear()


def test_an_exception_carrying_a_token_is_redacted_in_message_and_traceback(
        stream_logger) -> None:
    logger, out = stream_logger

    def connect(url: str, token: str) -> None:
        raise ConnectionError(f"could not open {url} with {token} (secret {SIGNING})")

    try:
        connect(TICKET_URL, BOT_TOKEN)
    except ConnectionError:
        logger.exception("socket failed for %s", BOT_TOKEN)
    try:
        raise RuntimeError(f"discord said no to {DISCORD}")
    except RuntimeError as exc:
        logger.warning("start failed: %s", exc, exc_info=exc)
    logger.info("stack", stack_info=True, extra={})
    text = out.getvalue()
    assert "Traceback" in text and "ConnectionError" in text and "RuntimeError" in text
    for secret in (BOT_TOKEN, SIGNING, DISCORD, "0a1b2c3d-4e5f-6789"):
        assert secret not in text, secret
    assert "ticket=***" in text and "app_id=A1" in text


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "answered: 120 prompt tokens (3 turns), reply 40 chars in 1.20 s; xoxb is a prefix"
    assert redact(text) == text


def test_setup_logging_redacts_what_reaches_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.service.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", [SIGNING])
        try:
            raise ValueError(f"bad secret {SIGNING} and token {BOT_TOKEN}")
        except ValueError:
            logging.getLogger("rinna-bot").exception("failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in ("discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx",
                     "websockets", "bitsandbytes.backends.cpu.ops"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "ValueError" in err and SIGNING not in err and BOT_TOKEN not in err


def test_library_lines_that_say_nothing_stay_out_of_the_service_log(tmp_path: Path) -> None:
    """discord.py's voice warnings (PyNaCl, davey) and slack-bolt's "As you gave client"
    (it reads SLACK_BOT_TOKEN from the environment itself) are dropped; our lines are not."""
    import os
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from bot.service.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "import discord\n"
        "discord.Client(intents=discord.Intents.none())\n"
        "from slack_bolt.async_app import AsyncApp\n"
        "from slack_sdk.web.async_client import AsyncWebClient\n"
        "AsyncApp(client=AsyncWebClient(token='xoxb-1'), signing_secret='x',\n"
        "         logger=logging.getLogger('slack_bolt'))\n"
        "logging.getLogger('discord.client').warning('a real discord warning')\n"
        "logging.getLogger('rinna-bot').info('still here')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "SLACK_BOT_TOKEN": "xoxb-from-the-environment"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert "rinna-bot: still here" in done.stderr and "a real discord warning" in done.stderr
    for noise in ("PyNaCl", "davey", "As you gave"):
        assert noise not in done.stderr, done.stderr
