"""Slack message text in and out: mrkdwn escapes, mentions, links (pure functions).

Slack sends `&`, `<`, `>` escaped and wraps mentions, channels and links in `<...>`.
Incoming text is turned into plain text (mentions resolved to names); outgoing text is
escaped so a reply can never ping `<!channel>` or forge a link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Every pattern here runs on user text, so each is linear: no part of a match may contain `<`
# (Slack escapes a typed `<` as `&lt;`), so a failed match stops at the next `<` and the scan
# from each `<` never re-reads what a later `<` starts. Without that, 40,000 `<` took a minute.
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^<>]*))?>")
_CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^<>]*))?>")
_SPECIAL = re.compile(r"<!([a-z]+)(?:\^[^<>|]*)?(?:\|([^<>]*))?>")
_LINK = re.compile(r"<([^<>@#!|][^<>|]*)(?:\|([^<>]*))?>")


def user_ids(text: str) -> set[str]:
    """The ids of the users mentioned in Slack text."""
    return {match.group(1) for match in _USER.finditer(text)}


def strip_mention(text: str, user_id: str | None) -> str:
    """`text` without mentions of `user_id` (the bot's own mention)."""
    if not user_id:
        return text
    return re.sub(rf"<@{re.escape(user_id)}(?:\|[^<>]*)?>", "", text)


def mentions(text: str, user_id: str | None) -> bool:
    return bool(user_id) and any(m.group(1) == user_id for m in _USER.finditer(text))


def to_plain(text: str, names: Mapping[str, str]) -> str:
    """Slack mrkdwn as the model should read it: `<@U1>` -> `@name`, `<#C1|general>` ->
    `#general`, `<!here>` -> `@here`, `<url|label>` -> `label (url)`, escapes undone."""

    def user(match: re.Match[str]) -> str:
        return "@" + (names.get(match.group(1)) or match.group(2) or match.group(1))

    def channel(match: re.Match[str]) -> str:
        return "#" + (match.group(2) or match.group(1))

    def special(match: re.Match[str]) -> str:
        return match.group(2) or "@" + match.group(1)

    def link(match: re.Match[str]) -> str:
        url, label = match.group(1), match.group(2)
        if url.startswith("mailto:"):
            url = url[len("mailto:"):]
        return f"{label} ({url})" if label and label != url else url

    text = _USER.sub(user, text)
    text = _CHANNEL.sub(channel, text)
    text = _SPECIAL.sub(special, text)
    text = _LINK.sub(link, text)
    return unescape(text)


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escape(text: str) -> str:
    """Text safe to post: Slack shows it as written, with no mention or link markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ts_order(ts: str) -> tuple[int, int]:
    """A Slack timestamp ("1700000000.000100") as a sortable value."""
    seconds, _, fraction = ts.partition(".")
    return int(seconds or 0), int(fraction or 0)
