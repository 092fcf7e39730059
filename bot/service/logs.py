"""Logging set-up: LOG_LEVEL, one format, and a filter that keeps secrets out of every record,
its exception text and traceback included."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path

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
# The password inside a URL (postgresql://user:PASSWORD@host/db), whatever the URL.
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s'\"]*):[^@\s/'\"]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret and every token-shaped string replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


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


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Lines libraries log that say nothing an operator can act on: (logger, start of the message).
_NOISE = (
    ("discord.client", "PyNaCl is not installed"),  # voice: this bot has none
    ("discord.client", "davey is not installed"),
    # Bolt reads SLACK_BOT_TOKEN from the environment itself; we hand it a client instead.
    ("slack_bolt", "As you gave `client` as well"),
)


class DropNoise(logging.Filter):
    """Drops the known library lines of _NOISE (matched by logger name and message start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any((record.name == name or record.name.startswith(name + "."))
                       and message.startswith(start) for name, start in _NOISE)


def setup_logging(level: str, secrets: Iterable[str] = (), *, screen_level: str | None = None,
                  log_file: Path | None = None) -> Path | None:
    """Records at `level` go to stderr (`run`: journald, docker logs). With `screen_level`
    (the chat's screen), stderr shows only that level and above, and records at `level` go to
    `log_file` if one is given. Returns the log file in use (None: none, or it could not be
    opened)."""
    level = level.upper()
    screen = (screen_level or level).upper()
    redact_filter, noise = RedactSecrets(secrets), DropNoise()
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(screen)
    handlers.append(stderr)
    opened = None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError:
            to_file = None  # nowhere, then: the screen still shows warnings
        if to_file is not None:
            to_file.setLevel(level)
            handlers.append(to_file)
            opened = log_file
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(redact_filter)
        handler.addFilter(noise)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(min(handler.level for handler in handlers))
    # Libraries are chatty at INFO (every HTTP request): keep them to warnings unless debugging.
    # (slack-bolt's AsyncApp is given the "slack_bolt" logger, so its loggers follow this.)
    for noisy in ("discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx", "httpx2",
                  "websockets"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
    # bitsandbytes on CPU suggests installing a hub-downloaded kernel at every load; it works
    # without it, and the hint would send people to the network for nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel("ERROR")
    logging.captureWarnings(True)  # warnings.warn() from libraries: a log record, not stderr
    return opened


def quiet_model_libraries() -> None:
    """Before the model loads: no progress bars from transformers ("Loading weights") or the
    hub, and transformers' own log lines through our handlers (its default handler writes
    straight to stderr, onto the chat)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
