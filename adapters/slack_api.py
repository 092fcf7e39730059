"""Slack's Web API as the adapter calls it: bounded retries (SlackApi), user names
(UserNames), and the errors a delivery can fail with."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.core.reply import describe
from bot.errors import RinnaError

log = logging.getLogger(__name__)

PLATFORM = "slack"  # the platform name in conversation keys and stored records


def message_ref(channel: str, ts: str) -> str:
    """How a Slack message is named in the store (a reply's ref, what a button press finds):
    `channel/ts`, since a ts is unique only within its channel."""
    return f"{channel}/{ts}"


DELIVERY_ERRORS: tuple[type[BaseException], ...] = (
    SlackClientError, aiohttp.ClientError, TimeoutError)

HISTORY_PAGE = 200  # messages asked for per conversations.replies / .history page
NAME_CACHE_SIZE = 10_000

Sleep = Callable[[float], Awaitable[None]]


class SlackConnectError(RinnaError):
    """Slack could not be reached at start (Socket Mode connection)."""


# ----- Web API calls with bounded retries -----------------------------------------------------
class SlackApi:
    """Calls AsyncWebClient methods by name, retrying `ratelimited` (after Retry-After) and
    5xx answers a bounded number of times; any other error is raised to the caller."""

    def __init__(self, client: AsyncWebClient, *, max_retries: int = 3,
                 max_wait_s: float = 30.0, sleep: Sleep = asyncio.sleep) -> None:
        self.client = client
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.sleep = sleep

    async def call(self, method: str, *, retry: bool = True, **kwargs: Any) -> AsyncSlackResponse:
        attempt = 0
        while True:
            try:
                return await getattr(self.client, method)(**kwargs)
            except SlackApiError as exc:
                delay = self._retry_delay(exc.response, attempt) if retry else None
                if delay is None:
                    raise
                log.warning("slack %s: %s (HTTP %s); retry %d in %.1f s", method,
                            exc.response.get("error", "error"), exc.response.status_code,
                            attempt + 1, delay)
            attempt += 1
            await self.sleep(delay)

    def post_retry_delay(self, exc: BaseException, attempt: int) -> float | None:
        """How long to wait before posting again after `exc`, or None to give up. Besides what
        `call` retries, network failures and timeouts (the message may exist: look first)."""
        if isinstance(exc, SlackApiError):
            return self._retry_delay(exc.response, attempt)
        if isinstance(exc, (aiohttp.ClientError, TimeoutError)) and attempt < self.max_retries:
            return min(float(2**attempt), self.max_wait_s)
        return None

    def _retry_delay(self, response: AsyncSlackResponse, attempt: int) -> float | None:
        if attempt >= self.max_retries:
            return None
        if response.status_code == 429 or response.get("error") == "ratelimited":
            return min(_retry_after(response), self.max_wait_s)
        if response.status_code >= 500:
            return min(float(2**attempt), self.max_wait_s)
        return None


def _retry_after(response: AsyncSlackResponse) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except (TypeError, ValueError):
        return 1.0


class UserNames:
    """User id -> display name through users.info; the id itself when unknown.

    Bounded (least recently used names go first) and single-flight: however many events ask
    for the same user at once, one users.info call is made and every asker gets its answer."""

    def __init__(self, api: SlackApi, size: int = NAME_CACHE_SIZE) -> None:
        self._api = api
        self.size = size
        self._names: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, asyncio.Future[str]] = {}

    def __len__(self) -> int:
        return len(self._names)

    async def lookup(self, ids: Sequence[str] | set[str]) -> dict[str, str]:
        users = list(ids)
        names = await asyncio.gather(*(self.name(user) for user in users))
        return dict(zip(users, names, strict=True))

    async def name(self, user: str) -> str:
        if (known := self._names.get(user)) is not None:
            self._names.move_to_end(user)
            return known
        pending = self._pending.get(user)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(user))
            self._pending[user] = pending
            pending.add_done_callback(lambda _: self._pending.pop(user, None))
        # shielded: one asker giving up does not cancel the lookup the others wait for
        return await asyncio.shield(pending)

    def _remember(self, user: str, name: str) -> None:
        self._names[user] = name
        self._names.move_to_end(user)
        while len(self._names) > self.size:
            self._names.popitem(last=False)

    async def _fetch(self, user: str) -> str:
        try:
            info = await self._api.call("users_info", user=user)
        except SlackApiError as exc:  # unknown user, missing users:read: do not ask again
            log.warning("slack users.info %s: %s", user, exc.response.get("error", "error"))
            self._remember(user, user)
            return user
        except DELIVERY_ERRORS as exc:
            log.warning("slack users.info %s failed: %s", user, describe(exc))
            return user
        profile = info.get("user") or {}
        details = profile.get("profile") or {}
        name = (details.get("display_name") or details.get("real_name")
                or profile.get("real_name") or profile.get("name") or user)
        self._remember(user, name)
        return name


MODERATOR_TTL_S = 600.0
MODERATOR_CACHE = 1000


class Moderators:
    """Whether a user is a workspace admin or owner (users.info), cached for a while; an
    unknown user or a failed lookup is not a moderator."""

    def __init__(self, api: SlackApi, ttl_s: float = MODERATOR_TTL_S,
                 size: int = MODERATOR_CACHE) -> None:
        self._api = api
        self.ttl_s = ttl_s
        self.size = size
        self._known: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    async def check(self, user: str) -> bool:
        now = time.monotonic()
        if (known := self._known.get(user)) is not None and now - known[1] < self.ttl_s:
            return known[0]
        try:
            info = await self._api.call("users_info", user=user)
        except SlackApiError as exc:
            log.warning("slack users.info %s: %s", user, exc.response.get("error", "error"))
            return False
        except Exception as exc:  # network: not cached, asked again next time
            log.warning("slack users.info %s failed: %s", user, type(exc).__name__)
            return False
        profile = info.get("user") or {}
        moderator = bool(profile.get("is_admin") or profile.get("is_owner")
                         or profile.get("is_primary_owner"))
        self._known[user] = (moderator, now)
        self._known.move_to_end(user)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return moderator
