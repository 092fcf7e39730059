"""Values that settings are parsed into and that every part may use (vocabulary: it imports
nothing of ours): lists of platform ids, and the keys of a community's own settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
