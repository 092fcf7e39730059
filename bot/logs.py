"""Logging set-up: LOG_LEVEL, one format, and a filter that keeps secrets out of every record,
its exception text and traceback included."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

REDACTED = "***"

# Secrets that may reach a log without being configured here (another token pasted in, a token
# inside an exception from a library, a Socket Mode URL): each pattern is linear.
_PATTERNS = (
    re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]{6,}"),  # Slack bot / user / config tokens
    re.compile(r"\bxapp-[A-Za-z0-9-]{6,}"),  # Slack app-level tokens
    # Slack Socket Mode websocket URLs carry a one-time ticket that lets anyone connect.
    re.compile(r"(?<=[?&]ticket=)[^&\s'\"]+"),
    # Discord bot tokens: base64 user id . timestamp . HMAC
    re.compile(r"\b[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}"),
    re.compile(r"(?i)(?<=authorization: bearer )[^\s'\"]+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret and every token-shaped string replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """Replaces any configured secret, and any token-shaped text, that reaches a log record
    (message, exception text, traceback, stack) with `***`."""

    _formatter = logging.Formatter()

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message, self._secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatted once here, so every handler's formatter prints the redacted text.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self._secrets)
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    level = level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO (every HTTP request): keep them to warnings unless debugging.
    # (slack-bolt's AsyncApp is given the "slack_bolt" logger, so its loggers follow this.)
    for noisy in ("discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx", "httpx2",
                  "websockets"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
    # bitsandbytes on CPU suggests installing a hub-downloaded kernel at every load; it works
    # without it, and the hint would send people to the network for nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel("ERROR")
