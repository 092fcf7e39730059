"""Discord's attachments on a message, and their download: from Discord's own hosts only (the
API base and CDN base discord.py is configured with, so a local fake is Discord too), with no
token at all (attachment URLs are signed)."""

from __future__ import annotations

from collections.abc import Iterable

import discord

from adapters.file_download import FileHosts, HostFetcher
from bot.core.attachments import Attachment
from bot.config import Settings


def discord_file_hosts() -> FileHosts:
    """Discord's hosts as discord.py is configured now: its REST base and its CDN base."""
    return FileHosts.of(discord.http.Route.BASE, discord.asset.Asset.BASE)


def discord_fetcher(settings: Settings) -> HostFetcher | None:
    """The fetcher for Discord attachments (None: files are not read)."""
    if settings.attachments_max == 0:
        return None
    return HostFetcher(discord_file_hosts(), timeout_s=settings.attachment_timeout_s)


def discord_attachments(attachments: Iterable[discord.Attachment]) -> tuple[Attachment, ...]:
    """A message's attachments as the core reads them (a long paste is `message.txt`)."""
    return tuple(Attachment(a.filename, a.url, a.size, a.content_type) for a in attachments)


def superseded_content(text: str, notice: str, limit: int) -> str:
    """An earlier answer whose question was edited and answered again: the notice, then its
    text struck through line by line (text with a code block is left unstruck), within
    Discord's `limit` characters."""
    lines = text.split("\n")
    if "```" not in text:
        lines = [f"~~{line}~~" if line.strip() else line for line in lines]
    body = f"-# {notice}\n" + "\n".join(lines)
    return body if len(body) <= limit else body[:limit - 1] + "…"
