"""Logging set-up: LOG_LEVEL, one format, and a filter that keeps secrets out of every record."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable


class RedactSecrets(logging.Filter):
    """Replaces any configured secret that reaches a log record with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO (every HTTP request): keep them to warnings unless debugging.
    for noisy in ("discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx", "httpx2",
                  "websockets"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
    # bitsandbytes on CPU suggests installing a hub-downloaded kernel at every load; it works
    # without it, and the hint would send people to the network for nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel("ERROR")
