"""`python -m bot.service.healthcheck`: the container's HEALTHCHECK. Exit 0 when healthy, else 1.

With METRICS_PORT unset there is no health endpoint, so there is nothing to check: exit 0
(the container is then only as healthy as its process). Otherwise GET /healthz on the bot's
own metrics server (127.0.0.1 when it listens on every address) and print its one-line reason
when it is not 200. Standard library and Settings only: it runs every 30 s.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from bot.config import load_settings
from bot.errors import RinnaError

TIMEOUT_S = 5.0


def check() -> tuple[int, str]:
    try:
        settings = load_settings()
    except RinnaError as exc:
        return 1, str(exc)
    if settings.metrics_port is None:
        return 0, "metrics off (METRICS_PORT unset): no health endpoint to check"
    host = settings.metrics_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - http only
            return 0, response.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return 1, f"{exc.code}: {exc.read().decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return 1, f"{url}: {getattr(exc, 'reason', exc)}"


def main() -> int:
    status, message = check()
    print(message, file=sys.stdout if status == 0 else sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
