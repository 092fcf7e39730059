"""Values that settings are parsed into and that every part may use (vocabulary: it imports
nothing of ours): lists of platform ids, the keys of a community's own settings, and the
passwords a database URL holds (what logs must never show)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

# The settings a community may change for itself (bot/core/community_values.py parses and
# bounds them; COMMUNITY_KEYS picks which of these a deployment allows).
COMMUNITY_KEYS: tuple[str, ...] = ("persona", "enabled", "mention_only", "temperature",
                                   "max_new_tokens", "repetition_penalty", "window", "buttons")


def parse_ids(value: Any) -> frozenset[str]:
    """`"1, 2,,3"` -> {"1", "2", "3"}; an iterable of ids is taken as is."""
    if value is None:
        return frozenset()
    if isinstance(value, (int, str)):
        items: Iterable[Any] = str(value).split(",")
    else:
        items = value
    return frozenset(s for item in items if (s := str(item).strip()))


def url_passwords(url: str) -> list[str]:
    """The passwords a URL holds, as written and decoded: the user's (`user:pw@host`) and
    any `password=` query parameter (libpq's form, `postgresql://host/db?password=pw`)."""
    try:
        parts = urlsplit(url)
        written = [parts.password] if parts.password else []
    except ValueError:
        return []
    written += [value for value in re.findall(r"(?:^|&)password=([^&]*)", parts.query)
                if value]
    return sorted({variant for value in written
                   for variant in (value, unquote(value), unquote_plus(value))},
                  key=len, reverse=True)
