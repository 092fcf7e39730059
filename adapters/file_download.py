"""Downloading a platform's attached files: from its own hosts only, streamed with a byte cap,
within a timeout, redirects followed by hand so that every hop is checked the same way.

Each platform says which hosts are its own (`FileHosts`, derived from the API base URL the
client is configured with, so a local fake in tests is "the platform" just as the real one is)
and which headers go with a request (Slack: the bot token; Discord: none). Headers are only
ever sent to an allowed host, because no other host is ever asked: a redirect elsewhere ends
the download. URLs come from the platform's event (its file objects), never from a message's
text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import yarl

from bot.core.attachments import Attachment
from bot.errors import AttachmentTooLarge, AttachmentUnavailable

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class FileHosts:
    """Where a platform's files may be downloaded from: exactly these origins (scheme, host,
    port), and over https any subdomain of these domains (Slack's API at slack.com serves files
    from files.slack.com)."""

    origins: frozenset[tuple[str, str, int]]
    domains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *bases: str, subdomains: bool = False) -> FileHosts:
        """The origins of `bases` (the platform client's configured base URLs); with
        `subdomains`, also any https subdomain of a named (not numeric) base host."""
        origins, domains = set(), set()
        for base in bases:
            url = yarl.URL(base)
            if url.scheme not in DEFAULT_PORTS or not url.host:
                raise ValueError(f"not an http(s) base URL: {base!r}")
            origins.add(_origin(url))
            if subdomains and url.scheme == "https" and not _numeric(url.host):
                domains.add(url.host.lower())
        return cls(frozenset(origins), frozenset(domains))

    def allows(self, url: yarl.URL) -> bool:
        if url.scheme not in DEFAULT_PORTS or not url.host or url.user or url.password:
            return False
        if _origin(url) in self.origins:
            return True
        host = url.host.lower()
        return (url.scheme == "https" and url.explicit_port in (None, 443)
                and any(host.endswith("." + domain) for domain in self.domains))


def _origin(url: yarl.URL) -> tuple[str, str, int]:
    return (url.scheme, (url.host or "").lower(), url.port or DEFAULT_PORTS[url.scheme])


def _numeric(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host


def _is_page(attachment: Attachment) -> bool:
    """Whether the file itself is a web page (then text/html is its content)."""
    kind = (attachment.content_type or "").split(";", 1)[0].strip().lower()
    return kind == "text/html" or attachment.name.lower().endswith((".html", ".htm"))


def _where(url: yarl.URL) -> str:
    """A URL as logs show it: no query (signed links carry their signature there)."""
    return str(url.with_query(None).with_fragment(None))


class HostFetcher:
    """A `bot.core.attachments.Fetcher` for one platform. `headers` go with every request (all of
    them to the platform's own hosts). A session is opened per download, so nothing is held
    between messages and nothing is built before the loop runs."""

    def __init__(self, hosts: FileHosts, *, timeout_s: float,
                 headers: Mapping[str, str] | None = None,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self._headers = dict(headers or {})
        self.max_redirects = max_redirects

    def __repr__(self) -> str:  # the headers may hold a token
        return f"HostFetcher(hosts={sorted(self.hosts.origins)}, timeout_s={self.timeout_s})"

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        url = yarl.URL(attachment.url)
        if not self.hosts.allows(url):
            log.warning("attachment %r: %s is not the platform's own host; not fetched",
                        attachment, url.host)
            raise AttachmentUnavailable("not the platform's host")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._download(url, max_bytes, _is_page(attachment))
        except TimeoutError:
            log.warning("attachment %r: no whole file within %.0f s", attachment,
                        self.timeout_s)
            raise AttachmentUnavailable("timed out") from None
        except aiohttp.ClientError as exc:
            log.warning("attachment %r: %s", attachment, type(exc).__name__)
            raise AttachmentUnavailable(type(exc).__name__) from None

    async def _download(self, url: yarl.URL, max_bytes: int, page: bool) -> bytes:
        async with aiohttp.ClientSession(headers=self._headers) as session:
            for _ in range(self.max_redirects + 1):
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = self._next_hop(url, response)
                        continue
                    if response.status != 200:
                        log.warning("attachment at %s: HTTP %d", _where(url), response.status)
                        raise AttachmentUnavailable(f"HTTP {response.status}")
                    if response.content_type == "text/html" and not page:
                        # Slack answers a file it will not give this token (no files:read)
                        # with its sign-in page: that is not the file.
                        log.warning("attachment at %s: a web page came instead of the file",
                                    _where(url))
                        raise AttachmentUnavailable("a web page instead of the file")
                    return await _read_capped(response, max_bytes)
        raise AttachmentUnavailable("too many redirects")

    def _next_hop(self, url: yarl.URL, response: aiohttp.ClientResponse) -> yarl.URL:
        location = response.headers.get("Location")
        if not location:
            raise AttachmentUnavailable("redirect without a location")
        target = url.join(yarl.URL(location))
        if not self.hosts.allows(target):
            log.warning("attachment at %s redirects to %s, not the platform's host; not "
                        "followed", _where(url), target.host)
            raise AttachmentUnavailable("redirect to another host")
        return target


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, stopping (and refusing) as soon as it is longer than `max_bytes`."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise AttachmentTooLarge(f"{declared} bytes declared")
    data = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise AttachmentTooLarge(f"over {max_bytes} bytes")
    return bytes(data)
