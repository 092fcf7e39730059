"""Slack's files in a message event, and their download: from Slack's own hosts only (those of
SLACK_API_URL: slack.com's subdomains such as files.slack.com, or a proxy's or a test's origin),
with the bot token, which goes nowhere else (adapters/file_download.py checks every hop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapters.file_download import FileHosts, HostFetcher
from bot.core.attachments import Attachment
from bot.config import Settings

DELETED_MODE = "tombstone"  # a file deleted since: nothing to say about it
# Files Slack shows but does not serve here: hidden by the free plan's limit, a link to another
# service (Google Drive...: its URL is not Slack's), or a stub to look up later
# (file_access: check_file_info). They stay in the list without a URL: the answer notes
# that they could not be downloaded.
UNSERVED_MODES = frozenset({"hidden_by_limit", "external"})
# Slack's snippets and posts say what they are in `filetype`; their `mimetype` may be generic.
TEXT_FILETYPES = frozenset({"text", "markdown", "post", "csv", "json", "yaml", "xml", "html",
                            "javascript", "python", "shell", "sql", "diff", "go", "java"})


def slack_file_hosts(api_url: str) -> FileHosts:
    """Slack's file hosts as the configured Web API base implies them."""
    return FileHosts.of(api_url, subdomains=True)


def slack_fetcher(settings: Settings) -> HostFetcher | None:
    """The fetcher for files shared in Slack (None: Slack is off, or files are not read)."""
    if settings.slack_bot_token is None or settings.attachments_max == 0:
        return None
    token = settings.slack_bot_token.get_secret_value()
    return HostFetcher(slack_file_hosts(settings.slack_api_url),
                       timeout_s=settings.attachment_timeout_s,
                       headers={"Authorization": f"Bearer {token}"})


def slack_attachments(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The files of a message event (a file share, a snippet), as the core reads them."""
    files = event.get("files")
    if not isinstance(files, Sequence) or isinstance(files, str):
        return ()
    found = []
    for item in files:
        attachment = _attachment(item) if isinstance(item, Mapping) else None
        if attachment is not None:
            found.append(attachment)
    return tuple(found)


def _attachment(item: Mapping[str, Any]) -> Attachment | None:
    if item.get("mode") == DELETED_MODE:
        return None
    name = item.get("name") or item.get("title") or item.get("id")
    if not isinstance(name, str):
        return None
    url = item.get("url_private_download") or item.get("url_private")
    if item.get("mode") in UNSERVED_MODES or item.get("is_external") or not isinstance(url, str):
        url = ""  # not fetched: noted as not downloaded
    size = item.get("size")
    mimetype = item.get("mimetype") if isinstance(item.get("mimetype"), str) else None
    if item.get("filetype") in TEXT_FILETYPES and not (mimetype or "").startswith("text/"):
        mimetype = "text/plain"
    return Attachment(name, url, size if isinstance(size, int) and size >= 0 else None,
                      mimetype)
